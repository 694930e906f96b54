//! The library side of the `fractal` command: a local run as `fractal up` describes it, for
//! the programs that drive or observe a running system (a topology's demo program).

pub mod running;
