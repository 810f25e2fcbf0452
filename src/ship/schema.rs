//! The ClickHouse table the shipper inserts into: the schema file
//! (`contrib/clickhouse/schema.sql`, compiled in for `lmgate clickhouse schema`) and what
//! `lmgate check` compares a running server's table with. Parsing is deliberately simple:
//! the column list of the file's `CREATE TABLE`, one `name Type ...` per entry, and the
//! engine's name.

/// The schema file's text.
pub const SCHEMA_SQL: &str = include_str!("../../contrib/clickhouse/schema.sql");

/// The engine the table must have (re-sent rows are removed by it, see the schema file).
pub const ENGINE: &str = "ReplacingMergeTree";

/// A column: name and type as `system.columns` spells them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Type, e.g. `Nullable(UInt64)`.
    pub kind: String,
}

/// The columns of the first `CREATE TABLE` in `sql`, in order.
pub fn parse_columns(sql: &str) -> Result<Vec<Column>, String> {
    let text: String = sql
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let at = text.find("CREATE TABLE").ok_or("no CREATE TABLE")?;
    let open = at + text[at..].find('(').ok_or("no column list")?;
    // The list ends at the parenthesis that closes `open`.
    let mut depth = 0;
    let mut entries = Vec::new();
    let mut start = open + 1;
    for (i, c) in text[open..].char_indices().map(|(i, c)| (i + open, c)) {
        match c {
            '(' => depth += 1,
            ')' if depth == 1 => {
                entries.push(&text[start..i]);
                break;
            }
            ')' => depth -= 1,
            ',' if depth == 1 => {
                entries.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    let mut columns = Vec::new();
    for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let (name, rest) = e
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("column `{e}` has no type"))?;
        columns.push(Column {
            name: name.trim_matches('`').to_owned(),
            kind: leading_type(rest.trim()),
        });
    }
    if columns.is_empty() {
        return Err("no columns".into());
    }
    Ok(columns)
}

/// The type at the start of `s`: a word and its balanced parentheses (`Decimal(10, 2)`).
fn leading_type(s: &str) -> String {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            c if c.is_whitespace() && depth == 0 => return s[..i].to_owned(),
            _ => {}
        }
    }
    s.to_owned()
}

/// Parse `system.columns` rows (`name<TAB>type` lines).
pub fn parse_tsv_columns(tsv: &str) -> Vec<Column> {
    tsv.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, t)| Column {
            name: n.to_owned(),
            kind: t.to_owned(),
        })
        .collect()
}

/// What differs between the columns the schema declares and a table's: one line each.
/// Extra columns in the table are fine (an operator's own additions).
pub fn differences(want: &[Column], have: &[Column]) -> Vec<String> {
    let mut out = Vec::new();
    for w in want {
        match have.iter().find(|h| h.name == w.name) {
            None => out.push(format!("missing column `{}` {}", w.name, w.kind)),
            Some(h) if h.kind != w.kind => out.push(format!(
                "column `{}` is {}, the schema says {}",
                w.name, h.kind, w.kind
            )),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_files_columns_parse() {
        let cols = parse_columns(SCHEMA_SQL).unwrap();
        let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names.first(), Some(&"timestamp"));
        assert_eq!(names.last(), Some(&"request_id"));
        assert!(cols.contains(&Column {
            name: "time".into(),
            kind: "DateTime".into()
        }));
        assert!(cols.contains(&Column {
            name: "input_tokens".into(),
            kind: "Nullable(UInt64)".into()
        }));
        assert!(SCHEMA_SQL.contains(&format!("ENGINE = {ENGINE}")));
        // Every field a record line has is a column (`time` is derived).
        for field in [
            "lmgate_id",
            "usage_status",
            "cost_status",
            "duration_ms",
            "stream",
        ] {
            assert!(names.contains(&field), "{field}");
        }
    }

    #[test]
    fn types_keep_their_parentheses_and_comments_are_ignored() {
        let sql = "-- CREATE TABLE nope (x Int8)\nCREATE TABLE t\n(\n  a Decimal(10, 2) DEFAULT 0, -- a, b\n  `b` Nullable(String),\n  c DateTime MATERIALIZED now()\n) ENGINE = X";
        assert_eq!(
            parse_columns(sql).unwrap(),
            [
                Column {
                    name: "a".into(),
                    kind: "Decimal(10, 2)".into()
                },
                Column {
                    name: "b".into(),
                    kind: "Nullable(String)".into()
                },
                Column {
                    name: "c".into(),
                    kind: "DateTime".into()
                },
            ]
        );
        assert!(parse_columns("CREATE DATABASE x").is_err());
    }

    #[test]
    fn differences_name_missing_and_mistyped_columns() {
        let want = parse_columns("CREATE TABLE t (a String, b UInt8, c UInt64)").unwrap();
        let have = parse_tsv_columns("a\tString\nc\tUInt32\nz\tString\n");
        assert_eq!(
            differences(&want, &have),
            [
                "missing column `b` UInt8",
                "column `c` is UInt32, the schema says UInt64"
            ]
        );
        assert!(differences(&want, &parse_tsv_columns("a\tString\nb\tUInt8\nc\tUInt64\n")).is_empty());
    }
}
