//! The `--chart` picture: [`DailyTokens`] drawn as an SVG document in a `String`, with
//! plotters' SVG backend. Pure: writing the file is left to the caller.

use super::aggregate::{DailyTokens, OTHER_LABEL};
use super::args::ChartMetric;
use super::time::{format_day, MS_PER_DAY};

/// Chart size in pixels (plot, then the legend to its right).
const CHART_SIZE: (u32, u32) = (1024, 480);
const LEGEND_WIDTH: u32 = 320;
/// Longest series name drawn in full in the legend.
const LEGEND_LABEL_CHARS: usize = 48;

/// Text safe in an SVG document: XML 1.0 forbids most control characters even escaped.
/// Long names are shortened with `…`.
fn svg_label(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if clean.chars().count() > LEGEND_LABEL_CHARS {
        let mut short: String = clean.chars().take(LEGEND_LABEL_CHARS - 1).collect();
        short.push('…');
        short
    } else {
        clean
    }
}

/// A one-line caption safe in SVG.
fn svg_label_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Micro-dollars on the axis as dollars (the axis is drawing, not accounting: the
/// numbers in the report stay integers).
fn human_dollars(micros: f64) -> String {
    let d = micros / 1e6;
    match d {
        d if d >= 1e3 => format!("${}", human_tokens(d)),
        d if d >= 1.0 => format!("${d:.2}"),
        d => format!("${d:.4}"),
    }
}

fn human_tokens(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.1}G", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}k", n / 1e3),
        n => format!("{n:.0}"),
    }
}

fn series_color(i: usize, n: usize, name: &str) -> plotters::style::RGBAColor {
    use plotters::style::{Color, Palette, Palette99, RGBColor};
    if name == OTHER_LABEL && i + 1 == n {
        return RGBColor(160, 160, 160).to_rgba();
    }
    Palette99::pick(i).to_rgba()
}

/// The chart as an SVG document: one bar per day, stacked by series, and a legend with one
/// colour swatch and one `<text>` label per series.
///
/// Plotters is built without its `ttf` feature: the SVG backend writes each label as an SVG
/// `<text>` element that the viewer renders with its own fonts, and text sizes for layout
/// are plotters' estimate (`style/font/naive.rs`), so labels always appear, placed a little
/// approximately. Nothing is rasterized.
pub(super) fn render_chart(data: &DailyTokens, title: &str) -> Result<String, String> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    let (first_day, series) = data.series();
    let days = series.first().map_or(1, |s| s.1.len());
    let mut stacked = vec![0u64; days];
    for (_, v) in &series {
        for (s, x) in stacked.iter_mut().zip(v) {
            *s += x;
        }
    }
    // At least 10 so an empty chart gets whole-number ticks.
    let y_max = (stacked.iter().copied().max().unwrap_or(0).max(10) as f64) * 1.1;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (plot, legend) = root.split_horizontally(CHART_SIZE.0 - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot)
            .caption(svg_label_line(title), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5f64..(days as f64 - 0.5), 0f64..y_max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(0) // days are labelled below, one per bar, not at "nice" numbers
            .y_labels(8)
            .y_label_formatter(&|y| match data.metric() {
                ChartMetric::Tokens => human_tokens(*y),
                ChartMetric::Cost => human_dollars(*y),
            })
            .y_desc(match data.metric() {
                ChartMetric::Tokens => "tokens (input + output)",
                ChartMetric::Cost => "cost (USD)",
            })
            .x_desc("day (UTC)")
            .draw()
            .map_err(|e| e.to_string())?;

        let mut base = vec![0u64; days];
        for (i, (_, values)) in series.iter().enumerate() {
            let color = series_color(i, series.len(), &series[i].0);
            let bars: Vec<_> = values
                .iter()
                .enumerate()
                .filter(|(_, v)| **v > 0)
                .map(|(d, v)| {
                    let x = d as f64;
                    let (lo, hi) = (base[d] as f64, (base[d] + v) as f64);
                    Rectangle::new([(x - 0.35, lo), (x + 0.35, hi)], color.filled())
                })
                .collect();
            chart.draw_series(bars).map_err(|e| e.to_string())?;
            for (b, v) in base.iter_mut().zip(values) {
                *b += v;
            }
        }

        // Day labels under the bars; at most ~12 of them so they never overlap.
        let step = days.div_ceil(12).max(1);
        let days_with_labels = if series.is_empty() { 0 } else { days };
        let label_style = ("sans-serif", 14)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        for d in (0..days_with_labels).step_by(step) {
            let (x, y) = chart.backend_coord(&(d as f64, 0.0));
            let day = format_day((first_day + d as i64) * MS_PER_DAY);
            root.draw(&Text::new(day, (x, y + 6), label_style.clone()))
                .map_err(|e| e.to_string())?;
        }

        let title_style = ("sans-serif", 16).into_font().color(&BLACK);
        let text_style = ("sans-serif", 14).into_font().color(&BLACK);
        legend
            .draw(&Text::new(data.by().column(), (10, 40), title_style))
            .map_err(|e| e.to_string())?;
        if series.is_empty() {
            legend
                .draw(&Text::new(
                    match data.metric() {
                        ChartMetric::Tokens => "no tokens in range",
                        ChartMetric::Cost => "no cost in range",
                    },
                    (10, 66),
                    text_style.clone(),
                ))
                .map_err(|e| e.to_string())?;
        }
        for (i, (name, _)) in series.iter().enumerate() {
            let y = 66 + 22 * i as i32;
            let color = series_color(i, series.len(), name);
            legend
                .draw(&Rectangle::new([(10, y), (24, y + 14)], color.filled()))
                .map_err(|e| e.to_string())?;
            legend
                .draw(&Text::new(svg_label(name), (32, y + 1), text_style.clone()))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::args::ChartBy;
    use crate::report::test_support::{daily_of, line};

    /// Control characters are not allowed in XML 1.0, escaped or not.
    #[test]
    fn chart_labels_are_xml_safe_and_one_per_series() {
        let lines = [
            line(
                Some("a<&>\u{1}"),
                "m",
                "2026-11-20T10:00:00Z",
                Some(5),
                "exact",
                false,
            ),
            line(Some("b"), "m", "2026-11-21T10:00:00Z", Some(5), "exact", false),
            line(
                Some(&"x".repeat(80)),
                "m",
                "2026-11-21T10:00:00Z",
                Some(1),
                "exact",
                false,
            ),
        ];
        let svg = render_chart(&daily_of(&lines, ChartBy::Key), "t\u{7}itle").unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(!svg
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r')));
        assert!(svg.contains("a&lt;&amp;&gt;?\n"), "escaped and cleaned");
        assert!(svg.contains(&format!("{}…\n", "x".repeat(LEGEND_LABEL_CHARS - 1))));
        assert!(svg.contains(">\nb\n</text>") || svg.contains("b\n</text>"));
        // An empty chart is still a document.
        let empty = render_chart(&DailyTokens::new(ChartBy::Model), "empty").unwrap();
        assert!(empty.contains("no tokens in range"));
    }
}
