//! Two plain SVG charts: drain throughput per pair beside the two
//! references, and the latency distribution of each steady-load run.

use std::fmt::Write;

use crate::report::thousands;

/// Quantiles the latency chart plots, left to right.
pub const QUANTILES: [f64; 9] = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0];
const QUANTILE_NAMES: [&str; 9] = [
    "p1", "p10", "p25", "p50", "p75", "p90", "p99", "p99.9", "max",
];
const COLOURS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
const FONT: &str = r#"font-family="sans-serif" font-size="12""#;

/// Horizontal bars, three per pair: naive, relay, ceiling, on one linear
/// scale with each value written beside its bar.
/// `rows`: (pair, relay, ceiling, naive) in msg/s.
pub fn throughput(rows: &[(String, f64, f64, f64)]) -> String {
    let (left, width, bar, gap) = (230.0, 460.0, 14.0, 16.0);
    let group = 3.0 * bar + gap;
    let height = 60.0 + group * rows.len() as f64 + 30.0;
    let top = rows
        .iter()
        .map(|r| r.1.max(r.2).max(r.3))
        .fold(1.0_f64, f64::max);
    let mut svg = header(800.0, height, "Drain throughput, msg/s");
    for (i, (pair, relay, ceiling, naive)) in rows.iter().enumerate() {
        let y0 = 45.0 + group * i as f64;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end" {FONT}>{}</text>"#,
            left - 8.0,
            y0 + 1.5 * bar + 4.0,
            escape(pair)
        );
        let bars = [
            ("naive", naive, 2),
            ("relay", relay, 0),
            ("ceiling", ceiling, 1),
        ];
        for (j, (_, value, colour)) in bars.iter().enumerate() {
            let y = y0 + bar * j as f64;
            let w = (**value / top * width).max(1.0);
            let _ = writeln!(
                svg,
                r#"<rect x="{left}" y="{y}" width="{w:.1}" height="{}" fill="{}"/><text x="{:.1}" y="{}" {FONT}>{}</text>"#,
                bar - 2.0,
                COLOURS[*colour],
                left + w + 4.0,
                y + bar - 4.0,
                thousands(**value)
            );
        }
    }
    let legend_y = height - 18.0;
    for (i, (name, colour)) in [("relay", 0), ("ceiling", 1), ("naive", 2)]
        .iter()
        .enumerate()
    {
        let x = left + 110.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{legend_y}" {FONT}>{name}</text>"#,
            legend_y - 10.0,
            COLOURS[*colour],
            x + 16.0
        );
    }
    svg + "</svg>\n"
}

/// One line per run: latency (log scale, ms) at each of [`QUANTILES`].
/// `lines`: (name, milliseconds at each quantile).
pub fn latency(lines: &[(String, Vec<f64>)]) -> String {
    let (left, top, width, height) = (70.0, 40.0, 600.0, 300.0);
    let low = lines
        .iter()
        .flat_map(|l| l.1.iter().copied())
        .fold(f64::MAX, f64::min)
        .max(0.01);
    let high = lines
        .iter()
        .flat_map(|l| l.1.iter().copied())
        .fold(0.0, f64::max)
        .max(low * 10.0);
    let (lo, hi) = (low.log10().floor(), high.log10().ceil());
    let y_of = |ms: f64| top + height - (ms.max(low).log10() - lo) / (hi - lo) * height;
    let x_of = |i: usize| left + width * i as f64 / (QUANTILES.len() - 1) as f64;
    let legend_rows = lines.len() as f64;
    let mut svg = header(
        800.0,
        top + height + 50.0 + 18.0 * legend_rows,
        "Commit to broker latency, ms (log scale)",
    );
    let mut decade = lo;
    while decade <= hi {
        let y = y_of(10f64.powf(decade));
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" {FONT}>{}</text>"##,
            left + width,
            left - 6.0,
            y + 4.0,
            10f64.powf(decade)
        );
        decade += 1.0;
    }
    for (i, name) in QUANTILE_NAMES.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" {FONT}>{name}</text>"#,
            x_of(i),
            top + height + 18.0
        );
    }
    for (n, (name, points)) in lines.iter().enumerate() {
        let colour = COLOURS[n % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .enumerate()
            .map(|(i, ms)| format!("{:.1},{:.1}", x_of(i), y_of(*ms)))
            .collect();
        let legend_y = top + height + 40.0 + 18.0 * n as f64;
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/><rect x="{left}" y="{}" width="12" height="12" fill="{colour}"/><text x="{}" y="{legend_y}" {FONT}>{}</text>"#,
            path.join(" "),
            legend_y - 10.0,
            left + 16.0,
            escape(name)
        );
    }
    svg + "</svg>\n"
}

fn header(width: f64, height: f64, title: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0}" viewBox="0 0 {width} {height:.0}">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-family="sans-serif" font-size="15" font-weight="bold">{}</text>
"#,
        escape(title)
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
