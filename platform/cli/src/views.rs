//! `fractal views`: a service's views, rebuilt from the lake.

use anyhow::bail;
use fractal::Hub;
use fractal::view::rebuild::{self, Rebuilt};

use crate::lake::Progress;
use crate::topology::Topology;

/// How many keys of each kind of difference the report names.
const SHOWN: usize = 20;

/// The hub of service `service` (`<subsystem>/<service>`) and its consumer's service name,
/// once `view` is checked to be one of its views.
pub(crate) fn locate<'a>(
    topology: &'a Topology,
    service: &str,
    view: &str,
) -> anyhow::Result<(String, &'a str)> {
    let found = topology.service(service)?;
    if !found.spec.views.iter().any(|v| v == view) {
        bail!(
            "service `{service}` has no view `{view}` in the topology (its views: {})",
            if found.spec.views.is_empty() {
                "none".to_owned()
            } else {
                found.spec.views.join(", ")
            }
        );
    }
    Ok((found.hub().to_owned(), found.config.service.as_str()))
}

/// Rebuilds `view` of the service whose consumer is `service`, with progress on stderr, and
/// returns the report of what changed.
pub(crate) async fn rebuild(hub: &Hub, service: &str, view: &str) -> anyhow::Result<String> {
    let mut shown: Option<Progress> = None;
    let Rebuilt { progress, verified } = rebuild::rebuild(hub, service, view, |p| {
        let bar = shown.get_or_insert_with(|| Progress::new("rebuilt", 1, p.total.max(1)));
        bar.show(p.done.clamp(1, p.total.max(1)), p.done);
    })
    .await?;
    if let Some(bar) = &shown {
        bar.done(progress.done);
    }
    let mut report = format!(
        "Rebuild {} of view `{view}`: {} events applied, {} faults.\n",
        progress.id, progress.done, progress.faults
    );
    for (switched, verified) in progress.switched.iter().zip(&verified) {
        report.push_str(&format!(
            "`{}`: now in bucket `{}` (was `{}`, kept until the next rebuild): {} entries \
             alike, {} differ, {} only before, {} only after, {} changed since the switch.\n",
            verified.view,
            switched.bucket,
            switched.previous,
            verified.same,
            verified.differ.len(),
            verified.only_old.len(),
            verified.only_new.len(),
            verified.changed_since,
        ));
        for (what, keys) in [
            ("differ", &verified.differ),
            ("only before", &verified.only_old),
            ("only after", &verified.only_new),
        ] {
            if keys.is_empty() {
                continue;
            }
            let more = keys.len().saturating_sub(SHOWN);
            report.push_str(&format!(
                "  {what}: {}{}\n",
                keys[..keys.len().min(SHOWN)].join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
    }
    Ok(report)
}
