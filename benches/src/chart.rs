//! A hand-written SVG chart of a scenario timeline (`--chart FILE.svg`): foreground
//! throughput, p99 latency (log scale) and migration progress over time, sharing one time
//! axis, with the migration window shaded and the scenario's events marked.

use std::fmt::Write as _;

use crate::timeline::Row;

/// Something that happened at an instant (seconds since the load started).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    pub at_s: f64,
    pub what: String,
}

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 80.0;
const PANEL_H: f64 = 170.0;
const GAP: f64 = 50.0;
const TOP: f64 = 70.0;

const READ: &str = "#1f77b4";
const WRITE: &str = "#ff7f0e";
const PACER: &str = "#7f3fbf";
const PROGRESS: &str = "#2ca02c";
const CONTROL: &str = "#999999";

struct Panel {
    top: f64,
    x_max: f64,
}

impl Panel {
    fn x(&self, t: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (t / self.x_max).clamp(0.0, 1.0)
    }
    fn bottom(&self) -> f64 {
        self.top + PANEL_H
    }
    /// Linear y for `v` in `0..=max`.
    fn y_lin(&self, v: f64, max: f64) -> f64 {
        self.bottom() - PANEL_H * (v / max).clamp(0.0, 1.0)
    }
    /// Log10 y for `v` in `lo..=hi` (decades).
    fn y_log(&self, v: f64, lo: f64, hi: f64) -> f64 {
        let f = ((v.max(1e-9).log10() - lo) / (hi - lo)).clamp(0.0, 1.0);
        self.bottom() - PANEL_H * f
    }
}

/// A "nice" step for about `n` ticks up to `max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn si(v: f64) -> String {
    let (x, suffix) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = format!("{x:.2}");
    format!("{}{suffix}", s.trim_end_matches('0').trim_end_matches('.'))
}

fn polyline(out: &mut String, pts: &[(f64, f64)], color: &str, width: f64, dash: Option<&str>) {
    if pts.is_empty() {
        return;
    }
    let mut d = String::new();
    for (x, y) in pts {
        let _ = write!(d, "{x:.1},{y:.1} ");
    }
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="{color}" stroke-width="{width}"{} points="{}"/>"#,
        dash.map_or_else(String::new, |d| format!(r#" stroke-dasharray="{d}""#)),
        d.trim_end()
    );
}

fn text(out: &mut String, x: f64, y: f64, anchor: &str, size: f64, color: &str, s: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" font-size="{size}" fill="{color}">{}</text>"#,
        esc(s)
    );
}

fn frame(out: &mut String, p: &Panel, title: &str) {
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{:.1}" width="{:.1}" height="{PANEL_H}" fill="none" stroke="#444"/>"##,
        p.top,
        WIDTH - LEFT - RIGHT
    );
    text(out, LEFT, p.top - 8.0, "start", 13.0, "#222", title);
}

fn legend(out: &mut String, p: &Panel, items: &[(&str, &str, Option<&str>)]) {
    let mut x = WIDTH - RIGHT;
    for (label, color, dash) in items.iter().rev() {
        let w = 14.0 + 7.0 * label.len() as f64;
        x -= w + 16.0;
        let y = p.top - 12.0;
        let _ = writeln!(
            out,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="2.5"{}/>"#,
            x + 12.0,
            dash.map_or_else(String::new, |d| format!(r#" stroke-dasharray="{d}""#))
        );
        text(out, x + 16.0, y + 4.0, "start", 11.0, "#222", label);
    }
}

fn x_axis(out: &mut String, p: &Panel, label: bool) {
    let step = nice_step(p.x_max, 10.0);
    let mut t = 0.0;
    while t <= p.x_max + 1e-9 {
        let x = p.x(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            p.top,
            p.bottom()
        );
        text(out, x, p.bottom() + 14.0, "middle", 10.0, "#444", &si(t));
        t += step;
    }
    if label {
        text(
            out,
            (LEFT + WIDTH - RIGHT) / 2.0,
            p.bottom() + 30.0,
            "middle",
            11.0,
            "#444",
            "seconds since the foreground load started",
        );
    }
}

fn y_axis_lin(out: &mut String, p: &Panel, max: f64, right: bool, unit: &str, color: &str) {
    let step = nice_step(max, 4.0);
    let mut v = 0.0;
    while v <= max + 1e-9 {
        let y = p.y_lin(v, max);
        if !right {
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/>"##,
                WIDTH - RIGHT
            );
        }
        let (x, anchor) = if right {
            (WIDTH - RIGHT + 6.0, "start")
        } else {
            (LEFT - 6.0, "end")
        };
        text(
            out,
            x,
            y + 4.0,
            anchor,
            10.0,
            color,
            &format!("{}{unit}", si(v)),
        );
        v += step;
    }
}

/// The chart as an SVG document. `control` (a control run's rows) is drawn in grey behind
/// the main run's throughput and latency, when given.
pub fn svg(
    title: &str,
    rows: &[Row],
    control: Option<&[Row]>,
    events: &[Event],
    window: Option<(f64, f64)>,
) -> String {
    let x_max = rows
        .iter()
        .chain(control.unwrap_or_default())
        .map(|r| r.elapsed_s)
        .fold(1.0, f64::max);
    let has_migration = rows.iter().any(|r| r.fraction_migrated.is_some());
    let has_reads = rows.iter().any(|r| r.reads_per_sec > 0.0);
    let panels = 3.0;
    let height = TOP + panels * (PANEL_H + GAP) + 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    text(&mut out, WIDTH / 2.0, 24.0, "middle", 16.0, "#111", title);
    let panel = |i: f64| Panel {
        top: TOP + i * (PANEL_H + GAP),
        x_max,
    };

    // Shading and event markers first, so the data is drawn over them.
    let shade = |out: &mut String, p: &Panel| {
        if let Some((a, b)) = window {
            let _ = writeln!(
                out,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{PANEL_H}" fill="#ffcc80" fill-opacity="0.35"/>"##,
                p.x(a),
                p.top,
                (p.x(b) - p.x(a)).max(1.0)
            );
        }
        for e in events {
            let x = p.x(e.at_s);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#c62828" stroke-dasharray="4,3"/>"##,
                p.top,
                p.bottom()
            );
        }
    };

    // 1. Throughput.
    let p = panel(0.0);
    let tmax = rows
        .iter()
        .chain(control.unwrap_or_default())
        .map(|r| r.reads_per_sec.max(r.writes_per_sec))
        .fold(1.0, f64::max)
        * 1.1;
    shade(&mut out, &p);
    x_axis(&mut out, &p, false);
    y_axis_lin(&mut out, &p, tmax, false, "", "#444");
    frame(&mut out, &p, "Foreground throughput (ops/s)");
    if let Some(c) = control {
        let pts = |f: fn(&Row) -> f64| -> Vec<(f64, f64)> {
            c.iter()
                .map(|r| (p.x(r.elapsed_s), p.y_lin(f(r), tmax)))
                .collect()
        };
        polyline(
            &mut out,
            &pts(|r| r.reads_per_sec),
            CONTROL,
            1.2,
            Some("3,2"),
        );
        polyline(
            &mut out,
            &pts(|r| r.writes_per_sec),
            CONTROL,
            1.2,
            Some("1,2"),
        );
    }
    let pts = |f: fn(&Row) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .map(|r| (p.x(r.elapsed_s), p.y_lin(f(r), tmax)))
            .collect()
    };
    let mut items = Vec::new();
    if has_reads {
        polyline(&mut out, &pts(|r| r.reads_per_sec), READ, 1.8, None);
        items.push(("reads/s", READ, None));
    }
    polyline(&mut out, &pts(|r| r.writes_per_sec), WRITE, 1.8, None);
    items.push(("writes/s", WRITE, None));
    if control.is_some() {
        items.push(("control run", CONTROL, Some("3,2")));
    }
    legend(&mut out, &p, &items);

    // 2. p99 latency, log scale.
    let p = panel(1.0);
    let lat: Vec<f64> = rows
        .iter()
        .chain(control.unwrap_or_default())
        .flat_map(|r| [r.read_p99_us, r.write_p99_us])
        .chain(
            rows.iter()
                .filter_map(|r| r.pacer_fg_p99_us.map(|v| v as f64)),
        )
        .filter(|v| *v > 0.0)
        .collect();
    let lo = lat
        .iter()
        .copied()
        .fold(f64::MAX, f64::min)
        .max(0.1)
        .log10()
        .floor();
    let hi = lat
        .iter()
        .copied()
        .fold(1.0, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let lo = if lat.is_empty() { 0.0 } else { lo };
    shade(&mut out, &p);
    x_axis(&mut out, &p, false);
    let mut d = lo;
    while d <= hi + 1e-9 {
        let y = p.y_log(10f64.powf(d), lo, hi);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/>"##,
            WIDTH - RIGHT
        );
        text(
            &mut out,
            LEFT - 6.0,
            y + 4.0,
            "end",
            10.0,
            "#444",
            &format!("{}µs", si(10f64.powf(d))),
        );
        d += 1.0;
    }
    frame(&mut out, &p, "p99 latency per second (µs, log scale)");
    let pts_log = |rs: &[Row], f: fn(&Row) -> f64| -> Vec<(f64, f64)> {
        rs.iter()
            .filter(|r| f(r) > 0.0)
            .map(|r| (p.x(r.elapsed_s), p.y_log(f(r), lo, hi)))
            .collect()
    };
    if let Some(c) = control {
        polyline(
            &mut out,
            &pts_log(c, |r| r.read_p99_us),
            CONTROL,
            1.2,
            Some("3,2"),
        );
        polyline(
            &mut out,
            &pts_log(c, |r| r.write_p99_us),
            CONTROL,
            1.2,
            Some("1,2"),
        );
    }
    let mut items = Vec::new();
    if has_reads {
        polyline(&mut out, &pts_log(rows, |r| r.read_p99_us), READ, 1.8, None);
        items.push(("read p99", READ, None));
    }
    polyline(
        &mut out,
        &pts_log(rows, |r| r.write_p99_us),
        WRITE,
        1.8,
        None,
    );
    items.push(("write p99", WRITE, None));
    if has_migration {
        polyline(
            &mut out,
            &pts_log(rows, |r| r.pacer_fg_p99_us.map_or(0.0, |v| v as f64)),
            PACER,
            1.2,
            Some("5,3"),
        );
        items.push(("p99 the pacer sees", PACER, Some("5,3")));
    }
    legend(&mut out, &p, &items);

    // 3. Migration progress and the pacer's budget.
    if has_migration {
        let p = panel(2.0);
        shade(&mut out, &p);
        x_axis(&mut out, &p, true);
        y_axis_lin(&mut out, &p, 100.0, false, "%", PROGRESS);
        let rmax = rows
            .iter()
            .filter_map(|r| r.pacer_rate_bytes_per_sec)
            .map(|b| b as f64 / (1 << 20) as f64)
            .fold(1.0, f64::max)
            * 1.1;
        y_axis_lin(&mut out, &p, rmax, true, " MB/s", PACER);
        frame(
            &mut out,
            &p,
            "Migration: share of the data in the layout being migrated to; pacer budget",
        );
        let mut area = Vec::new();
        let mut first_x = None;
        let mut last_x = 0.0;
        // The new layout starts empty when the migration starts.
        if let Some((a, _)) = window {
            let x = p.x(a);
            first_x = Some(x);
            area.push((x, p.bottom()));
        }
        for r in rows {
            if let Some(f) = r.fraction_migrated {
                let x = p.x(r.elapsed_s);
                first_x.get_or_insert(x);
                last_x = x;
                area.push((x, p.y_lin(f * 100.0, 100.0)));
            }
        }
        if let Some(fx) = first_x {
            let mut d = format!("M{fx:.1},{:.1} ", p.bottom());
            for (x, y) in &area {
                let _ = write!(d, "L{x:.1},{y:.1} ");
            }
            let _ = write!(d, "L{last_x:.1},{:.1} Z", p.bottom());
            let _ = writeln!(
                out,
                r#"<path d="{d}" fill="{PROGRESS}" fill-opacity="0.25" stroke="{PROGRESS}" stroke-width="1.5"/>"#
            );
        }
        let rate: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| {
                r.pacer_rate_bytes_per_sec
                    .map(|b| (p.x(r.elapsed_s), p.y_lin(b as f64 / (1 << 20) as f64, rmax)))
            })
            .collect();
        polyline(&mut out, &rate, PACER, 1.5, None);
        legend(
            &mut out,
            &p,
            &[
                ("% in new layout", PROGRESS, None),
                ("pacer budget MB/s", PACER, None),
            ],
        );
    } else {
        // 3. The LSM under the load: compaction debt, L0 files, stalls.
        let p = panel(2.0);
        x_axis(&mut out, &p, true);
        let mb = |b: u64| b as f64 / (1 << 20) as f64;
        let dmax = rows
            .iter()
            .map(|r| mb(r.pending_compaction_bytes))
            .fold(1.0, f64::max)
            * 1.1;
        let lmax = rows
            .iter()
            .map(|r| r.l0_files_max as f64)
            .fold(4.0, f64::max)
            * 1.1;
        let smax = rows.iter().map(|r| r.stall_ms).fold(0.0, f64::max);
        y_axis_lin(&mut out, &p, dmax, false, " MB", PROGRESS);
        y_axis_lin(&mut out, &p, lmax, true, " L0", PACER);
        frame(
            &mut out,
            &p,
            "LSM: compaction debt, most L0 files in a partition, stalls",
        );
        // Stalls: a bar per second, full height = the worst second.
        if smax > 0.0 {
            let w = (p.x(1.0) - p.x(0.0)).max(2.0) * 0.6;
            for r in rows.iter().filter(|r| r.stall_ms > 0.0) {
                let h = PANEL_H * 0.5 * r.stall_ms / smax;
                let _ = writeln!(
                    out,
                    r##"<rect x="{:.1}" y="{:.1}" width="{w:.1}" height="{h:.1}" fill="#d62728" fill-opacity="0.5"/>"##,
                    p.x(r.elapsed_s) - w,
                    p.bottom() - h
                );
            }
        }
        let debt: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| {
                (
                    p.x(r.elapsed_s),
                    p.y_lin(mb(r.pending_compaction_bytes), dmax),
                )
            })
            .collect();
        polyline(&mut out, &debt, PROGRESS, 1.8, None);
        let l0: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (p.x(r.elapsed_s), p.y_lin(r.l0_files_max as f64, lmax)))
            .collect();
        polyline(&mut out, &l0, PACER, 1.5, None);
        let stall_label = format!("stall ms (tallest {smax:.0})");
        legend(
            &mut out,
            &p,
            &[
                ("debt MB", PROGRESS, None),
                ("L0 files", PACER, None),
                (stall_label.as_str(), "#d62728", None),
            ],
        );
    }

    // Event labels along the top of the first panel.
    let p0 = panel(0.0);
    for (i, e) in events.iter().enumerate() {
        let x = p0.x(e.at_s);
        let y = TOP - 32.0 + 11.0 * (i % 2) as f64;
        text(&mut out, x, y, "middle", 10.0, "#c62828", &e.what);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_well_formed_document() {
        let rows: Vec<Row> = (1..=20)
            .map(|s| Row {
                second: s,
                elapsed_s: s as f64,
                phase: if s < 5 { "stable" } else { "migrating" }.into(),
                reads_per_sec: 1000.0 + s as f64,
                writes_per_sec: 500.0,
                read_p99_us: 100.0 * s as f64,
                write_p99_us: 50.0,
                fraction_migrated: (s >= 5).then(|| (s - 5) as f64 / 15.0),
                pacer_rate_bytes_per_sec: (s >= 5).then_some(8 << 20),
                pacer_fg_p99_us: (s >= 5).then_some(120),
                ..Row::default()
            })
            .collect();
        let events = [Event {
            at_s: 5.0,
            what: "set_target v2 <hash>".into(),
        }];
        let s = svg(
            "t & t",
            &rows,
            Some(&rows[..10]),
            &events,
            Some((5.0, 20.0)),
        );
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert!(s.contains("&lt;hash&gt;") && s.contains("t &amp; t"));
        assert_eq!(s.matches("<svg").count(), 1);
        assert!(s.matches("<polyline").count() >= 6);
    }

    #[test]
    fn steps_are_nice() {
        assert_eq!(nice_step(100.0, 4.0), 50.0);
        assert_eq!(nice_step(7.0, 10.0), 1.0);
        assert_eq!(si(1500.0), "1.5k");
        assert_eq!(si(20.0), "20");
    }
}
