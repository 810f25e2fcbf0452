//! Sums of usage: [`Report`] groups records by the chosen dimensions and counts each group
//! ([`Totals`]), [`Owners`] names the owner of an `lmgate_id`, and [`DailyTokens`] keeps the
//! tokens per day the chart draws. Pure: records in, numbers out.
//!
//! Memory grows with the number of groups (and days × series for the chart), never with the
//! number of records.

use super::args::{ChartBy, ChartMetric, Dimension};
use super::read::Record;
use super::time::{format_day, MS_PER_DAY};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Most series drawn in a chart; the rest are summed into one `(other)` series.
pub(super) const MAX_CHART_SERIES: usize = 10;
/// Shown for a group value the record leaves null (no key, no provider, no model).
pub(super) const NONE_LABEL: &str = "(none)";
/// Owner of an `lmgate_id` that the allow-list does not name (or could not be read).
pub(super) const UNKNOWN_OWNER: &str = "(unknown)";
/// The chart series that sums the smallest ones beyond [`MAX_CHART_SERIES`].
pub(super) const OTHER_LABEL: &str = "(other)";

/// Counters of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Totals {
    /// Records.
    pub(super) requests: u64,
    /// Records whose `error_type` is not null.
    pub(super) errors: u64,
    /// Token sums in `TOKEN_COLUMNS` order (null counts add nothing).
    pub(super) tokens: [u64; 5],
    /// Micro-dollars (null costs add nothing).
    pub(super) cost_micros: u64,
    /// Records whose model had no price.
    pub(super) unpriced: u64,
    /// Records per usage status, in `STATUSES` order.
    pub(super) statuses: [u64; 5],
}

impl Totals {
    fn add(&mut self, r: &Record<'_>) {
        self.requests += 1;
        self.errors += u64::from(r.error);
        for (sum, t) in self.tokens.iter_mut().zip(r.tokens) {
            *sum = sum.saturating_add(t.unwrap_or(0));
        }
        self.cost_micros = self.cost_micros.saturating_add(r.cost_micros.unwrap_or(0));
        self.unpriced += u64::from(r.unpriced);
        self.statuses[r.status] += 1;
    }

    /// Add the counters of another group (a group summed by a database).
    pub(super) fn merge(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (sum, t) in self.tokens.iter_mut().zip(other.tokens) {
            *sum = sum.saturating_add(t);
        }
        self.cost_micros = self.cost_micros.saturating_add(other.cost_micros);
        self.unpriced += other.unpriced;
        for (sum, n) in self.statuses.iter_mut().zip(other.statuses) {
            *sum += n;
        }
    }

    /// Every counter in column order (requests, errors, tokens, cost, unpriced, statuses).
    pub(super) fn values(&self) -> impl Iterator<Item = u64> + '_ {
        [self.requests, self.errors]
            .into_iter()
            .chain(self.tokens)
            .chain([self.cost_micros, self.unpriced])
            .chain(self.statuses)
    }
}

/// `lmgate_id` -> owner. `None`: the allow-list could not be read (every owner unknown).
#[derive(Debug, Clone, Default)]
pub(super) struct Owners(Option<HashMap<String, String>>);

impl Owners {
    /// From an allow-list. Rows sharing an id with different owners show them all, sorted
    /// and joined with `/`, so the result does not depend on row order.
    pub(super) fn from_allowlist(list: &crate::allowlist::AllowList) -> Owners {
        let mut by_id: HashMap<&str, BTreeSet<&str>> = HashMap::new();
        for e in list.entries() {
            by_id.entry(&e.id).or_default().insert(&e.owner);
        }
        Owners(Some(
            by_id
                .into_iter()
                .map(|(id, owners)| (id.to_owned(), owners.into_iter().collect::<Vec<_>>().join("/")))
                .collect(),
        ))
    }

    /// Every owner is [`UNKNOWN_OWNER`].
    pub(super) fn unknown() -> Owners {
        Owners(None)
    }

    fn owner_of(&self, id: &str) -> &str {
        self.0
            .as_ref()
            .and_then(|m| m.get(id))
            .map_or(UNKNOWN_OWNER, String::as_str)
    }
}

/// A group's values, one per dimension; `None` = null in the record.
pub(super) type GroupKey = Vec<Option<String>>;

/// Usage grouped by the chosen dimensions. Memory: one entry per distinct group.
#[derive(Debug, Clone)]
pub(super) struct Report {
    dims: Vec<Dimension>,
    owners: Owners,
    groups: HashMap<GroupKey, Totals>,
    total: Totals,
}

impl Report {
    /// An empty report grouped by `dims` (duplicates ignored).
    pub(super) fn new(dims: &[Dimension], owners: Owners) -> Report {
        let mut unique = Vec::new();
        for d in dims {
            if !unique.contains(d) {
                unique.push(*d);
            }
        }
        Report {
            dims: unique,
            owners,
            groups: HashMap::new(),
            total: Totals::default(),
        }
    }

    /// The dimensions, in column order.
    pub(super) fn dims(&self) -> &[Dimension] {
        &self.dims
    }

    fn value(&self, dim: Dimension, r: &Record<'_>) -> Option<String> {
        match dim {
            Dimension::Key => r.lmgate_id.as_deref().map(str::to_owned),
            Dimension::Owner => r
                .lmgate_id
                .as_deref()
                .map(|id| self.owners.owner_of(id).to_owned()),
            Dimension::Provider => r.provider.as_deref().map(str::to_owned),
            Dimension::Model => r.model.as_deref().map(str::to_owned),
            Dimension::Day => Some(format_day(r.at_ms)),
        }
    }

    /// Count one record.
    pub(super) fn add(&mut self, r: &Record<'_>) {
        let key: GroupKey = self.dims.iter().map(|d| self.value(*d, r)).collect();
        self.groups.entry(key).or_default().add(r);
        self.total.add(r);
    }

    /// Count a group another source has already summed (ClickHouse's `GROUP BY`).
    /// `values` holds one value per dimension as the records have it: the `lmgate_id` for
    /// [`Dimension::Owner`] (mapped to its owner here, so ids of one owner merge), the UTC
    /// date (`2026-11-21`) for [`Dimension::Day`].
    pub(super) fn add_summed(&mut self, values: &[Option<String>], totals: &Totals) {
        let key: GroupKey = self
            .dims
            .iter()
            .zip(values)
            .map(|(d, v)| match d {
                Dimension::Owner => v.as_deref().map(|id| self.owners.owner_of(id).to_owned()),
                _ => v.clone(),
            })
            .collect();
        self.groups.entry(key).or_default().merge(totals);
        self.total.merge(totals);
    }

    /// Groups sorted by their values (a null value first).
    pub(super) fn rows(&self) -> Vec<(&GroupKey, &Totals)> {
        let mut rows: Vec<_> = self.groups.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        rows
    }

    /// All records in range.
    pub(super) fn total(&self) -> &Totals {
        &self.total
    }
}

/// Input + output tokens per (UTC day, series) for the chart. Memory: days × series.
#[derive(Debug, Clone)]
pub(super) struct DailyTokens {
    by: ChartBy,
    metric: ChartMetric,
    cells: BTreeMap<(i64, Option<String>), u64>,
}

impl DailyTokens {
    /// Empty tokens per day, stacked by `by`.
    #[cfg(test)]
    pub(super) fn new(by: ChartBy) -> DailyTokens {
        DailyTokens::of(by, ChartMetric::Tokens)
    }

    /// Empty `metric` per day, stacked by `by`.
    pub(super) fn of(by: ChartBy, metric: ChartMetric) -> DailyTokens {
        DailyTokens {
            by,
            metric,
            cells: BTreeMap::new(),
        }
    }

    /// What the series are.
    pub(super) fn by(&self) -> ChartBy {
        self.by
    }

    /// What is summed.
    pub(super) fn metric(&self) -> ChartMetric {
        self.metric
    }

    /// Count one record (a record without token counts, or without a cost when the chart
    /// draws cost, adds nothing).
    pub(super) fn add(&mut self, r: &Record<'_>) {
        let tokens = match self.metric {
            ChartMetric::Tokens => r.tokens[0].unwrap_or(0).saturating_add(r.tokens[1].unwrap_or(0)),
            ChartMetric::Cost => r.cost_micros.unwrap_or(0),
        };
        if tokens == 0 {
            return;
        }
        let series = match self.by {
            ChartBy::Key => r.lmgate_id.as_deref(),
            ChartBy::Model => r.model.as_deref(),
        };
        let cell = self
            .cells
            .entry((r.at_ms.div_euclid(MS_PER_DAY), series.map(str::to_owned)))
            .or_default();
        *cell = cell.saturating_add(tokens);
    }

    /// Add `value` summed elsewhere for one (day since 1970-01-01, series) cell; a zero adds
    /// nothing, as a record without tokens (or cost) adds nothing in [`DailyTokens::add`].
    pub(super) fn add_summed(&mut self, day: i64, series: Option<String>, value: u64) {
        if value == 0 {
            return;
        }
        let cell = self.cells.entry((day, series)).or_default();
        *cell = cell.saturating_add(value);
    }

    /// (first day, one value per day up to the last day, series largest first): days with
    /// no tokens are zeros, series beyond [`MAX_CHART_SERIES`] are summed into `(other)`.
    /// Days are counted from 1970-01-01.
    pub(super) fn series(&self) -> (i64, Vec<(String, Vec<u64>)>) {
        let (Some(first), Some(last)) = (
            self.cells.keys().map(|k| k.0).min(),
            self.cells.keys().map(|k| k.0).max(),
        ) else {
            return (0, Vec::new());
        };
        let days = (last - first + 1) as usize;
        let mut by_name: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for ((day, name), tokens) in &self.cells {
            let v = by_name
                .entry(name.as_deref().unwrap_or(NONE_LABEL))
                .or_insert_with(|| vec![0; days]);
            v[(day - first) as usize] += tokens;
        }
        let mut all: Vec<(String, Vec<u64>)> = by_name.into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
        // Largest total first; the name breaks ties so the order is stable.
        all.sort_by(|a, b| {
            let (ta, tb) = (a.1.iter().sum::<u64>(), b.1.iter().sum::<u64>());
            tb.cmp(&ta).then_with(|| a.0.cmp(&b.0))
        });
        if all.len() > MAX_CHART_SERIES {
            let rest = all.split_off(MAX_CHART_SERIES - 1);
            let mut other = vec![0; days];
            for (_, v) in rest {
                for (o, x) in other.iter_mut().zip(v) {
                    *o += x;
                }
            }
            all.push((OTHER_LABEL.to_owned(), other));
        }
        (first, all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::test_support::{daily_of, line, report_by, report_of};
    use crate::report::time::TimeRange;

    #[test]
    fn owners_come_from_the_allow_list_and_unknown_ids_say_so() {
        let list = crate::allowlist::parse_allowlist(b"id,api_key,owner,added\na,k1,alice,d\na,k2,alice,d\nb,sha256:0000000000000000000000000000000000000000000000000000000000000000,bob,d\nc,k3,zed,d\nc,k4,carol,d\n").unwrap();
        assert_eq!(list.entries().count(), 5);
        let owners = Owners::from_allowlist(&list);
        let lines = [
            line(Some("a"), "m", "2026-11-20T10:00:00Z", Some(1), "exact", false),
            line(Some("b"), "m", "2026-11-20T10:00:00Z", Some(1), "exact", false),
            line(Some("c"), "m", "2026-11-20T10:00:00Z", Some(1), "exact", false),
            line(Some("gone"), "m", "2026-11-20T10:00:00Z", Some(1), "exact", false),
            line(None, "m", "2026-11-20T10:00:00Z", Some(1), "exact", false),
        ];
        let (rep, _) = report_of(&lines, &[Dimension::Owner], owners, TimeRange::default());
        let names: Vec<_> = rep.rows().iter().map(|(k, _)| k[0].clone()).collect();
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(
            names,
            [None, s(UNKNOWN_OWNER), s("alice"), s("bob"), s("carol/zed")]
        );
        let rep = report_by(&lines, &[Dimension::Owner]);
        assert_eq!(rep.rows().len(), 2, "no allow-list: null and unknown");
    }

    #[test]
    fn groups_sum_tokens_count_errors_and_statuses_and_nulls_count_as_requests() {
        let lines = [
            line(Some("a"), "m1", "2026-11-20T10:00:00Z", Some(5), "exact", false),
            line(Some("a"), "m1", "2026-11-21T10:00:00Z", None, "absent", true),
            line(
                Some("a"),
                "m2",
                "2026-11-21T11:00:00Z",
                Some(7),
                "truncated",
                true,
            ),
            line(Some("b"), "m1", "2026-11-21T12:00:00Z", None, "over_limit", false),
            line(None, "m1", "2026-11-21T13:00:00Z", None, "unparsed", false),
        ];
        let rep = report_by(&lines, &[Dimension::Key, Dimension::Key]);
        assert_eq!(rep.dims(), &[Dimension::Key], "duplicates dropped");
        let rows = rep.rows();
        let keys: Vec<_> = rows.iter().map(|(k, _)| k[0].as_deref()).collect();
        assert_eq!(keys, [None, Some("a"), Some("b")]);
        assert_eq!(
            *rows[1].1,
            Totals {
                requests: 3,
                errors: 2,
                tokens: [12, 24, 0, 0, 2],
                cost_micros: 15_000_000,
                unpriced: 0,
                statuses: [1, 1, 0, 1, 0],
            }
        );
        assert_eq!(rows[2].1.requests, 1);
        assert_eq!(rows[2].1.tokens, [0; 5]);
        assert_eq!(rep.total().requests, 5);
        assert_eq!(rep.total().statuses, [1, 1, 1, 1, 1]);

        let rep = report_by(&lines, &[Dimension::Day, Dimension::Model]);
        let keys: Vec<_> = rep
            .rows()
            .iter()
            .map(|(k, t)| (k[0].clone().unwrap(), k[1].clone().unwrap(), t.requests))
            .collect();
        assert_eq!(
            keys,
            [
                ("2026-11-20".into(), "m1".into(), 1),
                ("2026-11-21".into(), "m1".into(), 3),
                ("2026-11-21".into(), "m2".into(), 1)
            ]
        );
    }

    #[test]
    fn groups_summed_elsewhere_give_the_report_and_chart_of_the_records() {
        let list = crate::allowlist::parse_allowlist(
            b"id,api_key,owner,added\na,k1,alice,d\nb,k2,alice,d\nc,k3,carol,d\n",
        )
        .unwrap();
        let lines = [
            line(Some("a"), "m1", "2026-11-21T09:00:00Z", Some(5), "exact", false),
            line(Some("b"), "m1", "2026-11-21T10:00:00Z", None, "absent", true),
            line(
                Some("b"),
                "m2",
                "2026-11-22T11:00:00Z",
                Some(7),
                "truncated",
                true,
            ),
            line(
                Some("c"),
                "m2",
                "2026-11-21T12:00:00Z",
                Some(0),
                "over_limit",
                false,
            ),
            line(
                Some("gone"),
                "m1",
                "2026-11-21T13:00:00Z",
                Some(2),
                "unparsed",
                false,
            ),
            line(None, "m1", "2026-11-21T13:00:00Z", None, "exact", false),
        ];
        let owners = Owners::from_allowlist(&list);
        let dims = [Dimension::Owner, Dimension::Day, Dimension::Model];
        let (want, _) = report_of(&lines, &dims, owners.clone(), TimeRange::default());
        // What the server returns: groups by lmgate_id in place of the owner.
        let by_id = [Dimension::Key, Dimension::Day, Dimension::Model];
        let (server, _) = report_of(&lines, &by_id, Owners::unknown(), TimeRange::default());
        let mut got = Report::new(&dims, owners);
        for (key, totals) in server.rows() {
            got.add_summed(key, totals);
        }
        assert_eq!(got.rows(), want.rows());
        assert_eq!(got.total(), want.total());
        assert_eq!(server.rows().len(), 6);
        assert_eq!(got.rows().len(), 5, "ids a and b merge under alice");

        for by in [ChartBy::Key, ChartBy::Model] {
            let want = daily_of(&lines, by);
            let mut got = DailyTokens::new(by);
            for ((day, series), v) in &want.cells {
                got.add_summed(*day, series.clone(), *v);
            }
            got.add_summed(0, Some("zero".into()), 0);
            assert_eq!(got.series(), want.series());
        }
    }

    #[test]
    fn chart_series_fill_empty_days_and_fold_the_smallest_into_other() {
        let mut lines = Vec::new();
        for i in 0..12u64 {
            let id = format!("k{i:02}");
            lines.push(line(
                Some(&id),
                "m",
                "2026-11-20T10:00:00Z",
                Some(100 - i),
                "exact",
                false,
            ));
        }
        // Three days later: one record with tokens, one without (it adds nothing).
        for (input, status, error) in [(Some(1), "exact", false), (None, "absent", true)] {
            lines.push(line(
                Some("k00"),
                "m",
                "2026-11-23T10:00:00Z",
                input,
                status,
                error,
            ));
        }
        let (first, series) = daily_of(&lines, ChartBy::Key).series();
        assert_eq!(format_day(first * MS_PER_DAY), "2026-11-20");
        assert_eq!(series.len(), MAX_CHART_SERIES);
        assert_eq!(series[0], ("k00".into(), vec![300, 0, 0, 3]));
        assert_eq!(series[MAX_CHART_SERIES - 1].0, OTHER_LABEL);
        assert_eq!(series[MAX_CHART_SERIES - 1].1, vec![(91 + 90 + 89) * 3, 0, 0, 0]);
    }
}
