//! The three text outputs of a [`Report`]: an aligned table, CSV, and one JSON document.
//! Pure: values in, text out; writing it is left to the caller.

use super::aggregate::{GroupKey, Report, Totals, NONE_LABEL};
use super::args::Dimension;
use super::read::{STATUSES, TOKEN_COLUMNS};
use super::time::{format_time, TimeRange};
use serde::{Serialize, Serializer};
use std::io;

/// Counter column names for CSV and JSON, in [`Totals::values`] order.
pub(super) fn counter_columns() -> Vec<&'static str> {
    let mut c = vec!["requests", "errors"];
    c.extend(TOKEN_COLUMNS.iter().map(|(name, _)| *name));
    c.extend(["cost_micros", "unpriced"]);
    c.extend(STATUSES.iter().map(|s| s.as_str()));
    c
}

/// Index of `cost_micros` in [`Totals::values`]: shown in dollars in the table.
const COST_COLUMN: usize = 2 + TOKEN_COLUMNS.len();

/// A group's counters as table cells: integers, and the cost in dollars.
fn table_cells(t: &Totals) -> impl Iterator<Item = String> + '_ {
    t.values().enumerate().map(|(i, n)| {
        if i == COST_COLUMN {
            crate::limits::spec::Dollars(n).to_string()
        } else {
            n.to_string()
        }
    })
}

/// Counter headers for the table (shorter token names), in [`Totals::values`] order.
fn counter_headers() -> Vec<&'static str> {
    let mut c = vec!["requests", "errors"];
    c.extend(TOKEN_COLUMNS.iter().map(|(_, short)| *short));
    c.extend(["cost", "unpriced"]);
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
        row.extend(table_cells(totals));
        rows.push(row);
    }
    let mut total: Vec<String> = vec![String::new(); dims];
    total[0] = "total".into();
    total.extend(table_cells(report.total()));
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

/// The JSON document: the filters, the groups, the total, and the number of malformed
/// lines skipped.
#[derive(Serialize)]
struct JsonReport<'a> {
    /// Dimension columns, in order.
    group_by: Vec<&'static str>,
    /// `--since` as RFC 3339, or null.
    since: Option<String>,
    /// `--until` as RFC 3339, or null.
    until: Option<String>,
    /// Lines skipped as malformed.
    malformed_lines: u64,
    /// Sorted by their values, a null value first.
    groups: Vec<JsonGroup<'a>>,
    /// All records in range.
    total: Counters,
}

/// One group: its value per dimension (named by the dimension's column), then its counters.
#[derive(Serialize)]
struct JsonGroup<'a> {
    #[serde(flatten)]
    values: GroupValues<'a>,
    #[serde(flatten)]
    counters: Counters,
}

/// Dimension column -> group value (null when the record has none), in dimension order.
/// A map because its names are the chosen dimensions, known only at run time.
struct GroupValues<'a> {
    dims: &'a [Dimension],
    key: &'a GroupKey,
}

impl Serialize for GroupValues<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.dims.iter().map(|d| d.column()).zip(self.key))
    }
}

/// The counters of a group, named as the CSV columns ([`counter_columns`]).
#[derive(Serialize)]
struct Counters {
    requests: u64,
    errors: u64,
    input_tokens: u64,
    output_tokens: u64,
    cache_read_input_tokens: u64,
    cache_creation_input_tokens: u64,
    reasoning_tokens: u64,
    cost_micros: u64,
    unpriced: u64,
    exact: u64,
    absent: u64,
    over_limit: u64,
    truncated: u64,
    unparsed: u64,
}

impl From<&Totals> for Counters {
    fn from(t: &Totals) -> Counters {
        let [input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens, reasoning_tokens] =
            t.tokens;
        let [exact, absent, over_limit, truncated, unparsed] = t.statuses;
        Counters {
            requests: t.requests,
            errors: t.errors,
            input_tokens,
            output_tokens,
            cache_read_input_tokens,
            cache_creation_input_tokens,
            reasoning_tokens,
            cost_micros: t.cost_micros,
            unpriced: t.unpriced,
            exact,
            absent,
            over_limit,
            truncated,
            unparsed,
        }
    }
}

/// The layout of the JSON document, between pretty and compact: the outer object one member
/// a line; an object inside an array (a group) on a line of its own; everything else on one
/// line, with `, ` and `: `. A group is one line to read or `grep`, the whole still valid JSON.
#[derive(Default)]
struct ReportLayout {
    /// The containers open around the current value, outermost first.
    open: Vec<Open>,
}

/// A container being written.
enum Open {
    Object,
    Array {
        /// The next element is the first.
        at_first: bool,
        /// An object element started a line: the rest follow on lines of their own.
        lines: bool,
    },
}

impl ReportLayout {
    fn new_line<W: ?Sized + io::Write>(w: &mut W, depth: usize) -> io::Result<()> {
        w.write_all(b"\n")?;
        for _ in 0..depth {
            w.write_all(b"  ")?;
        }
        Ok(())
    }
}

impl serde_json::ser::Formatter for ReportLayout {
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open.push(Open::Array {
            at_first: true,
            lines: false,
        });
        w.write_all(b"[")
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        if let Some(Open::Array { lines: true, .. }) = self.open.pop() {
            Self::new_line(w, self.open.len())?;
        }
        w.write_all(b"]")
    }

    fn begin_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        let depth = self.open.len();
        if let Some(Open::Array { at_first, lines }) = self.open.last_mut() {
            *at_first = first;
            if !first {
                w.write_all(b",")?;
                if *lines {
                    return Self::new_line(w, depth);
                }
                w.write_all(b" ")?;
            }
        }
        Ok(())
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        let depth = self.open.len();
        if let Some(Open::Array {
            at_first: true,
            lines,
        }) = self.open.last_mut()
        {
            *lines = true;
            Self::new_line(w, depth)?;
        }
        self.open.push(Open::Object);
        w.write_all(b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open.pop();
        if self.open.is_empty() {
            w.write_all(b"\n")?;
        }
        w.write_all(b"}")
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if !first {
            w.write_all(b",")?;
        }
        if self.open.len() == 1 {
            return Self::new_line(w, 1);
        }
        if !first {
            w.write_all(b" ")?;
        }
        Ok(())
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// One JSON document with the filters, the groups (one object a line), the total, and
/// the number of malformed lines skipped. A null group value is `null`.
pub(super) fn render_json(report: &Report, range: TimeRange, malformed: u64) -> String {
    let doc = JsonReport {
        group_by: report.dims().iter().map(|d| d.column()).collect(),
        since: range.since.map(format_time),
        until: range.until.map(format_time),
        malformed_lines: malformed,
        groups: report
            .rows()
            .into_iter()
            .map(|(key, totals)| JsonGroup {
                values: GroupValues {
                    dims: report.dims(),
                    key,
                },
                counters: totals.into(),
            })
            .collect(),
        total: report.total().into(),
    };
    let mut out = Vec::new();
    doc.serialize(&mut serde_json::Serializer::with_formatter(
        &mut out,
        ReportLayout::default(),
    ))
    .expect("strings and numbers serialize into memory");
    out.push(b'\n');
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
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
lmgate_id  day         requests  errors  input  output  cache_read  cache_write  reasoning   cost  unpriced  exact  absent  over_limit  truncated  unparsed
(none)     2026-11-21         1       0      1       2           0            0          1  $1.25         0      1       0           0          0         0
a          2026-11-20         1       0      5      10           0            0          1  $6.25         0      1       0           0          0         0
a,\"q\"      2026-11-21         1       1      0       0           0            0          0  $0.00         0      0       1           0          0         0
total                         3       1      6      12           0            0          2  $7.50         0      2       1           0          0         0
"
        );
        assert_eq!(
            render_csv(&rep),
            "\
lmgate_id,day,requests,errors,input_tokens,output_tokens,cache_read_input_tokens,cache_creation_input_tokens,reasoning_tokens,cost_micros,unpriced,exact,absent,over_limit,truncated,unparsed
,2026-11-21,1,0,1,2,0,0,1,1250000,0,1,0,0,0,0
a,2026-11-20,1,0,5,10,0,0,1,6250000,0,1,0,0,0,0
\"a,\"\"q\"\"\",2026-11-21,1,1,0,0,0,0,0,0,0,0,1,0,0,0
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
        assert!(
            last.starts_with("total ") && last.split_whitespace().skip(1).all(|n| n == "0" || n == "$0.00")
        );
        assert_eq!(table.lines().count(), 2, "header and total");
    }

    #[test]
    fn json_puts_one_member_a_line_and_one_group_a_line_with_the_csv_column_names() {
        let lines = [
            line(
                Some("a\n\"b\""),
                "m1",
                "2026-11-20T10:00:00Z",
                Some(5),
                "exact",
                false,
            ),
            line(None, "m2", "2026-11-21T13:00:00Z", None, "absent", true),
        ];
        let rep = report_by(&lines, &[Dimension::Key, Dimension::Model]);
        let range = TimeRange {
            since: None,
            until: Some(86_400_000),
        };
        let counters = |numbers: &str| {
            counter_columns()
                .iter()
                .zip(numbers.split(' '))
                .map(|(name, n)| format!(", \"{name}\": {n}"))
                .collect::<String>()
        };
        let want = format!(
            "{{\n  \"group_by\": [\"lmgate_id\", \"model\"],\n  \"since\": null,\n  \
             \"until\": \"1970-01-02T00:00:00.000Z\",\n  \"malformed_lines\": 7,\n  \
             \"groups\": [\n    {{\"lmgate_id\": null, \"model\": \"m2\"{}}},\n    \
             {{\"lmgate_id\": \"a\\n\\\"b\\\"\", \"model\": \"m1\"{}}}\n  ],\n  \
             \"total\": {{{}}}\n}}\n",
            counters("1 1 0 0 0 0 0 0 0 0 1 0 0 0"),
            counters("1 0 5 10 0 0 1 6250000 0 1 0 0 0 0"),
            &counters("2 1 5 10 0 0 1 6250000 0 1 1 0 0 0")[2..],
        );
        assert_eq!(render_json(&rep, range, 7), want);
        let empty = report_by(&[], &[Dimension::Day]);
        assert!(render_json(&empty, TimeRange::default(), 0)
            .contains("\n  \"malformed_lines\": 0,\n  \"groups\": [],\n  \"total\": {\"requests\": 0, "));
    }
}
