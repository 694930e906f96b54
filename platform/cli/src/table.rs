//! Plain-text tables: columns padded to their widest cell.

/// `rows` as lines of columns, two spaces apart and indented by two; the first row is the
/// header. Trailing spaces are trimmed.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(" ");
        for (cell, width) in row.iter().zip(&widths) {
            line.push(' ');
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 1));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_lines_end_without_spaces() {
        let rows = [
            vec!["what".to_owned(), "where".into()],
            vec!["hub system".into(), "nats://127.0.0.1:4222".into()],
            vec!["x".into(), String::new()],
        ];
        assert_eq!(
            table(&rows),
            "  what        where\n  hub system  nats://127.0.0.1:4222\n  x\n"
        );
    }
}
