//! The three text outputs of a [`Report`]: an aligned table, CSV, and one JSON document.
//! Pure: values in, text out; writing it is left to the caller.

use super::aggregate::{Report, Totals, NONE_LABEL};
use super::read::{STATUSES, TOKEN_COLUMNS};
use super::time::{format_time, TimeRange};
use std::fmt::Write as _;

/// Counter column names for CSV and JSON, in [`Totals::values`] order.
pub(super) fn counter_columns() -> Vec<&'static str> {
    let mut c = vec!["requests", "errors"];
    c.extend(TOKEN_COLUMNS.iter().map(|(name, _)| *name));
    c.extend(STATUSES.iter().map(|s| s.as_str()));
    c
}

/// Counter headers for the table (shorter token names), in [`Totals::values`] order.
fn counter_headers() -> Vec<&'static str> {
    let mut c = vec!["requests", "errors"];
    c.extend(TOKEN_COLUMNS.iter().map(|(_, short)| *short));
    c.extend(STATUSES.iter().map(|s| s.as_str()));
    c
}

/// A group value for the table: `(none)` for null; control characters (a newline in a
/// model name) would break the columns, so they show as `?`.
fn text_value(v: &Option<String>) -> String {
    match v {
        None => NONE_LABEL.to_owned(),
        Some(s) => s.chars().map(|c| if c.is_control() { '?' } else { c }).collect(),
    }
}

/// Aligned columns: group values left-aligned, counters right-aligned, a `total` row.
pub(super) fn render_table(report: &Report) -> String {
    let dims = report.dims().len();
    let mut header: Vec<String> = report.dims().iter().map(|d| d.column().to_owned()).collect();
    header.extend(counter_headers().into_iter().map(str::to_owned));
    let mut rows: Vec<Vec<String>> = vec![header];
    for (key, totals) in report.rows() {
        let mut row: Vec<String> = key.iter().map(text_value).collect();
        row.extend(totals.values().map(|n| n.to_string()));
        rows.push(row);
    }
    let mut total: Vec<String> = vec![String::new(); dims];
    total[0] = "total".into();
    total.extend(report.total().values().map(|n| n.to_string()));
    rows.push(total);

    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = widths[c] - cell.chars().count();
            if c < dims {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            } else {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// CSV with a header row, one row per group, no total row; a null group value is empty.
pub(super) fn render_csv(report: &Report) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<&str> = report.dims().iter().map(|d| d.column()).collect();
    header.extend(counter_columns());
    // Writing to a Vec cannot fail.
    w.write_record(&header).expect("csv into memory");
    for (key, totals) in report.rows() {
        let mut row: Vec<String> = key.iter().map(|v| v.clone().unwrap_or_default()).collect();
        row.extend(totals.values().map(|n| n.to_string()));
        w.write_record(&row).expect("csv into memory");
    }
    let bytes = w.into_inner().expect("csv into memory");
    String::from_utf8(bytes).expect("csv of UTF-8 strings is UTF-8")
}

fn json_counters(out: &mut String, t: &Totals) {
    for (name, n) in counter_columns().into_iter().zip(t.values()) {
        let _ = write!(out, ", \"{name}\": {n}");
    }
}

/// One JSON document with the filters, the groups (one object a line), the total, and
/// the number of malformed lines skipped. A null group value is `null`.
pub(super) fn render_json(report: &Report, range: TimeRange, malformed: u64) -> String {
    let js = |v: &Option<String>| serde_json::to_string(v).expect("strings serialize");
    let time = |t: Option<i64>| js(&t.map(format_time));
    let dims: Vec<String> = report
        .dims()
        .iter()
        .map(|d| js(&Some(d.column().to_owned())))
        .collect();
    let mut out = String::from("{\n");
    let _ = writeln!(out, "  \"group_by\": [{}],", dims.join(", "));
    let _ = writeln!(out, "  \"since\": {},", time(range.since));
    let _ = writeln!(out, "  \"until\": {},", time(range.until));
    let _ = writeln!(out, "  \"malformed_lines\": {malformed},");
    out.push_str("  \"groups\": [");
    let rows = report.rows();
    for (i, &(key, totals)) in rows.iter().enumerate() {
        out.push_str(if i == 0 { "\n    {" } else { ",\n    {" });
        let fields: Vec<String> = report
            .dims()
            .iter()
            .zip(key)
            .map(|(d, v)| format!("\"{}\": {}", d.column(), js(v)))
            .collect();
        out.push_str(&fields.join(", "));
        json_counters(&mut out, totals);
        out.push('}');
    }
    out.push_str(if rows.is_empty() { "],\n" } else { "\n  ],\n" });
    let mut total = String::new();
    json_counters(&mut total, report.total());
    let _ = writeln!(out, "  \"total\": {{{}}}", &total[2..]);
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::args::Dimension;
    use crate::report::test_support::{line, report_by};

    #[test]
    fn table_csv_and_json_carry_the_same_numbers() {
        let lines = [
            line(Some("a"), "m1", "2026-11-20T10:00:00Z", Some(5), "exact", false),
            line(
                Some("a,\"q\""),
                "m1",
                "2026-11-21T10:00:00Z",
                None,
                "absent",
                true,
            ),
            line(None, "m1", "2026-11-21T13:00:00Z", Some(1), "exact", false),
        ];
        let rep = report_by(&lines, &[Dimension::Key, Dimension::Day]);
        assert_eq!(
            render_table(&rep),
            "\
lmgate_id  day         requests  errors  input  output  cache_read  cache_write  reasoning  exact  absent  over_limit  truncated  unparsed
(none)     2026-11-21         1       0      1       2           0            0          1      1       0           0          0         0
a          2026-11-20         1       0      5      10           0            0          1      1       0           0          0         0
a,\"q\"      2026-11-21         1       1      0       0           0            0          0      0       1           0          0         0
total                         3       1      6      12           0            0          2      2       1           0          0         0
"
        );
        assert_eq!(
            render_csv(&rep),
            "\
lmgate_id,day,requests,errors,input_tokens,output_tokens,cache_read_input_tokens,cache_creation_input_tokens,reasoning_tokens,exact,absent,over_limit,truncated,unparsed
,2026-11-21,1,0,1,2,0,0,1,1,0,0,0,0
a,2026-11-20,1,0,5,10,0,0,1,1,0,0,0,0
\"a,\"\"q\"\"\",2026-11-21,1,1,0,0,0,0,0,0,1,0,0,0
"
        );
        let range = TimeRange {
            since: Some(0),
            until: None,
        };
        let v: serde_json::Value = serde_json::from_str(&render_json(&rep, range, 4)).unwrap();
        assert_eq!(v["group_by"], serde_json::json!(["lmgate_id", "day"]));
        assert_eq!(v["since"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["until"], serde_json::Value::Null);
        assert_eq!(v["malformed_lines"], 4);
        assert_eq!(v["groups"][0]["lmgate_id"], serde_json::Value::Null);
        assert_eq!(v["groups"][2]["lmgate_id"], "a,\"q\"");
        assert_eq!(v["groups"][1]["output_tokens"], 10);
        assert_eq!(v["total"]["requests"], 3);
        assert_eq!(v["total"]["absent"], 1);
        // Nothing in range is still a document.
        let empty = report_by(&[], &[Dimension::Key]);
        let v: serde_json::Value =
            serde_json::from_str(&render_json(&empty, TimeRange::default(), 0)).unwrap();
        assert_eq!(v["groups"], serde_json::json!([]));
        assert_eq!(v["total"]["requests"], 0);
        let table = render_table(&empty);
        let last = table.lines().last().unwrap();
        assert!(last.starts_with("total ") && last.split_whitespace().skip(1).all(|n| n == "0"));
        assert_eq!(table.lines().count(), 2, "header and total");
    }
}
