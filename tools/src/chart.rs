//! Pictures of partition balance: a terminal bar chart and a self-contained SVG.

use std::fmt::Write as _;

/// Partitions above this multiple of the mean are drawn as hot.
pub const HOT: f64 = 1.25;
/// Terminal charts with more partitions than this group neighbours into one row.
pub const MAX_ROWS: usize = 64;

/// One panel: the distribution of one layout version.
pub struct Panel {
    pub title: String,
    pub subtitle: String,
    pub counts: Vec<u64>,
}

/// Rows of a terminal bar chart of `counts` (one per partition, or per group of
/// neighbouring partitions when there are more than [`MAX_ROWS`]). Bars are scaled to the
/// largest row; `!` marks rows whose partitions hold on average more than [`HOT`] × the mean.
pub fn terminal_bars(counts: &[u64], width: usize) -> Vec<String> {
    let n = counts.len();
    if n == 0 {
        return Vec::new();
    }
    let group = n.div_ceil(MAX_ROWS);
    // Each row with the number of partitions in it: the last is short when `group` does
    // not divide `n`.
    let rows: Vec<(String, u64, usize)> = counts
        .chunks(group)
        .enumerate()
        .map(|(i, c)| {
            let lo = i * group;
            let label = if group == 1 {
                lo.to_string()
            } else {
                format!("{lo}-{}", lo + c.len() - 1)
            };
            (
                label,
                c.iter().fold(0, |a: u64, &b| a.saturating_add(b)),
                c.len(),
            )
        })
        .collect();
    let total = counts.iter().fold(0, |a: u64, &b| a.saturating_add(b));
    // Per partition: a row is hot when its partitions are, on average.
    let mean = total as f64 / n as f64;
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let label_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(1);
    const EIGHTHS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    rows.iter()
        .map(|(label, c, parts)| {
            let eighths = (*c as f64 / max as f64 * (width * 8) as f64).round() as usize;
            let mut bar = "█".repeat(eighths / 8);
            bar.push_str(EIGHTHS[eighths % 8]);
            let cells = eighths.div_ceil(8);
            let pad = " ".repeat(width.saturating_sub(cells));
            let share = if total == 0 {
                0.0
            } else {
                *c as f64 / total as f64
            };
            let hot = if mean > 0.0 && *c as f64 > HOT * mean * *parts as f64 {
                " !"
            } else {
                ""
            };
            format!(
                "  {label:>label_w$} │{bar}{pad}│ {:>6} {:>12}{hot}",
                crate::output::pct(share),
                crate::output::count(*c)
            )
        })
        .collect()
}

/// XML-escapes text for SVG and HTML.
pub fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const PANEL_W: f64 = 960.0;
const PANEL_H: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 40.0;

/// An SVG element (no XML prolog, so it can be inlined in HTML) with one bar chart panel
/// per distribution: share per partition, the mean as a dashed line, hot partitions in red.
pub fn svg_balance(panels: &[Panel]) -> String {
    let h = PANEL_H * panels.len().max(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{PANEL_W}" height="{h}" viewBox="0 0 {PANEL_W} {h}" font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = write!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    for (i, p) in panels.iter().enumerate() {
        panel(&mut s, p, i as f64 * PANEL_H);
    }
    if panels.is_empty() {
        let _ = write!(
            s,
            r##"<text x="20" y="40" fill="#555">No live layout versions.</text>"##
        );
    }
    s.push_str("</svg>");
    s
}

fn panel(s: &mut String, p: &Panel, y0: f64) {
    let n = p.counts.len().max(1);
    let total = p.counts.iter().fold(0, |a: u64, &b| a.saturating_add(b));
    if total == 0 {
        let _ = write!(
            s,
            r##"<text x="{LEFT}" y="{}" font-size="15" font-weight="600" fill="#111">{}</text><text x="{LEFT}" y="{}" fill="#555">{}</text><rect x="{LEFT}" y="{}" width="{}" height="{}" fill="#f9fafb" stroke="#e5e7eb"/><text x="{}" y="{}" text-anchor="middle" fill="#888">No data in this version ({n} partitions)</text>"##,
            y0 + 22.0,
            xml(&p.title),
            y0 + 40.0,
            xml(&p.subtitle),
            y0 + TOP,
            PANEL_W - LEFT - RIGHT,
            PANEL_H - TOP - BOTTOM,
            LEFT + (PANEL_W - LEFT - RIGHT) / 2.0,
            y0 + TOP + (PANEL_H - TOP - BOTTOM) / 2.0
        );
        return;
    }
    let shares = sluice::shares_of(&p.counts);
    let mean = 1.0 / n as f64;
    let top_share = shares.iter().copied().fold(mean * HOT * 1.1, f64::max);
    // A round axis maximum: the next multiple of a "nice" step.
    let step = nice_step(top_share / 4.0);
    let ymax = (top_share / step).ceil() * step;
    let plot_w = PANEL_W - LEFT - RIGHT;
    let plot_h = PANEL_H - TOP - BOTTOM;
    let base = y0 + TOP + plot_h;
    let _ = write!(
        s,
        r##"<text x="{LEFT}" y="{}" font-size="15" font-weight="600" fill="#111">{}</text><text x="{LEFT}" y="{}" fill="#555">{}</text>"##,
        y0 + 22.0,
        xml(&p.title),
        y0 + 40.0,
        xml(&p.subtitle)
    );
    // Grid and y labels.
    let mut t = 0.0;
    while t <= ymax + 1e-12 {
        let y = base - t / ymax * plot_h;
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e7eb"/><text x="{}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            fmt_pct_axis(t, step)
        );
        t += step;
    }
    let slot = plot_w / n as f64;
    let gap = if slot > 6.0 { slot * 0.15 } else { 0.0 };
    for (i, &sh) in shares.iter().enumerate() {
        let bh = if ymax > 0.0 { sh / ymax * plot_h } else { 0.0 };
        let hot = sh > mean * HOT;
        let color = if hot { "#dc2626" } else { "#2563eb" };
        let _ = write!(
            s,
            r#"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="{color}"><title>partition {i}: {} ({})</title></rect>"#,
            LEFT + i as f64 * slot + gap / 2.0,
            base - bh,
            (slot - gap).max(0.5),
            bh,
            crate::output::count(p.counts[i]),
            crate::output::pct(sh)
        );
    }
    // Mean line.
    let ym = base - mean / ymax * plot_h;
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" x2="{:.1}" y1="{ym:.1}" y2="{ym:.1}" stroke="#111" stroke-dasharray="5 4"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#111" stroke="#fff" stroke-width="3" paint-order="stroke">mean {}</text>"##,
        LEFT + plot_w,
        LEFT + plot_w,
        ym - 5.0,
        crate::output::pct(mean)
    );
    // X axis and partition labels (every k-th so they do not collide).
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" x2="{:.1}" y1="{base:.1}" y2="{base:.1}" stroke="#111"/>"##,
        LEFT + plot_w
    );
    let every = ((n as f64 * 28.0 / plot_w).ceil() as usize).max(1);
    for i in (0..n).step_by(every) {
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{i}</text>"##,
            LEFT + (i as f64 + 0.5) * slot,
            base + 16.0
        );
    }
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">partition</text>"##,
        LEFT + plot_w / 2.0,
        base + 33.0
    );
}

fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 0.25;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_pct_axis(v: f64, step: f64) -> String {
    // Enough decimals to tell ticks apart: 2.5% steps need one, 0.05% steps two.
    let mut decimals = 0;
    let mut st = step * 100.0;
    while decimals < 4 && (st - st.round()).abs() > 1e-9 {
        st *= 10.0;
        decimals += 1;
    }
    format!("{:.*}%", decimals, v * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_and_mark_hot_rows() {
        let rows = terminal_bars(&[10, 10, 40], 8);
        assert_eq!(rows.len(), 3);
        assert!(rows[2].contains("████████"), "{rows:?}");
        assert!(rows[2].ends_with('!'));
        assert!(!rows[0].ends_with('!'));
        let many = terminal_bars(&vec![1; 1000], 10);
        assert!(many.len() <= MAX_ROWS);
        assert!(many[0].contains("0-15"));
    }

    /// Grouped rows are judged by the mean partition in them: the last group is short when
    /// the partitions do not divide evenly (a 64-way hash with one partition split in two
    /// has 65), and it was held to a full group's sum. A partition at 2.4× the mean, alone
    /// in its row, went unmarked.
    #[test]
    fn a_hot_partition_alone_in_the_last_short_row_is_marked() {
        let mut counts = vec![100; 64];
        counts.push(240);
        let rows = terminal_bars(&counts, 10);
        assert_eq!(rows.len(), 33);
        let last = rows.last().unwrap();
        assert!(last.contains("64-64"), "{last}");
        assert!(last.ends_with('!'), "{rows:#?}");
        assert!(!rows[0].ends_with('!'), "{rows:#?}");
        // Nor is an even spread marked anywhere, the short row included.
        let even = terminal_bars(&vec![100; 65], 10);
        assert!(even.iter().all(|r| !r.ends_with('!')), "{even:#?}");
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let s = svg_balance(&[Panel {
            title: "v1 <hash>".into(),
            subtitle: "x & y".into(),
            counts: vec![1, 2, 3, 0],
        }]);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("v1 &lt;hash&gt;") && s.contains("x &amp; y"));
        assert_eq!(s.matches("<rect").count(), 5);
        assert_eq!(nice_step(0.03), 0.05);
        assert_eq!(fmt_pct_axis(0.25, 0.05), "25%");
        assert_eq!(fmt_pct_axis(0.075, 0.025), "7.5%");
        assert_eq!(fmt_pct_axis(0.0005, 0.0005), "0.05%");
    }
}
