//! HTML text: escaping, the page frame, and the host chart (an inline
//! SVG drawn here, so it needs no script).
//!
//! Everything that did not come from this file goes through [`esc`]:
//! app names, hosts, config keys, release descriptions and errors, build
//! log lines, actor names.

use std::fmt::Write;

use crate::metrics::history::Point;

/// Escape text for an element's content or a quoted attribute value.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Unix seconds as `2026-12-02 06:30 UTC`.
pub fn time(at: i64) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "-".to_owned())
}

/// `3h 5m`, `42s`: how long ago, or how long something has run.
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

pub fn bytes(n: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let f = n as f64;
    if f >= GIB {
        format!("{:.1} GiB", f / GIB)
    } else {
        format!("{:.0} MiB", f / MIB)
    }
}

/// Who is signed in, for the header.
pub struct Frame<'a> {
    pub title: &'a str,
    pub who: Option<(&'a str, &'a str)>,
    pub csrf: Option<&'a str>,
    /// Milliseconds between refreshes of the `data-live` sections.
    pub poll_ms: Option<u32>,
}

/// The whole page around `body` (already HTML).
pub fn page(frame: &Frame<'_>, body: &str) -> String {
    let v = env!("CARGO_PKG_VERSION");
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"csrf-token\" content=\"{csrf}\">\
         <title>{title} · Cygni</title>\
         <link rel=\"stylesheet\" href=\"/assets/dashboard.css?v={v}\">\
         <script src=\"/assets/dashboard.js?v={v}\" defer></script></head>\
         <body{poll}><header class=\"top\"><a class=\"brand\" href=\"/\">Cygni</a>",
        csrf = esc(frame.csrf.unwrap_or("")),
        title = esc(frame.title),
        poll = frame
            .poll_ms
            .map(|ms| format!(" data-poll=\"{ms}\""))
            .unwrap_or_default(),
    );
    if let Some((name, role)) = frame.who {
        let _ = write!(
            out,
            "<nav><a href=\"/\">Apps</a></nav><div class=\"who\"><span>{}</span> \
             <span class=\"badge role\">{}</span>\
             <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button class=\"link\" type=\"submit\">Sign out</button></form></div>",
            esc(name),
            esc(role),
            esc(frame.csrf.unwrap_or(""))
        );
    }
    let _ = writeln!(
        out,
        "</header><main>{body}</main><div id=\"flash\" role=\"status\" aria-live=\"polite\"></div></body></html>"
    );
    out
}

/// A status word as a coloured badge.
pub fn badge(status: &str) -> String {
    let class = match status {
        "live" | "running" | "valid" => "ok",
        "failed" | "crashed" | "expired" => "bad",
        "superseded" | "stopped" | "draining" | "no release" => "muted",
        _ => "busy",
    };
    format!(
        "<span class=\"badge {class}\" data-status=\"{s}\">{s}</span>",
        s = esc(status)
    )
}

/// The last hour of CPU, memory and disk as lines on one chart, 0–100 %.
pub fn host_chart(points: &[Point], now: i64) -> String {
    const W: f64 = 600.0;
    const H: f64 = 170.0;
    const LEFT: f64 = 40.0;
    const RIGHT: f64 = 590.0;
    const TOP: f64 = 10.0;
    const BOTTOM: f64 = 150.0;
    let start = now - 3600;
    let x = |at: i64| LEFT + ((at - start).clamp(0, 3600) as f64 / 3600.0) * (RIGHT - LEFT);
    let y = |share: f64| BOTTOM - share.clamp(0.0, 1.0) * (BOTTOM - TOP);
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"CPU, memory and disk over the last hour\">"
    );
    for (share, label) in [(0.0, "0%"), (0.5, "50%"), (1.0, "100%")] {
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#e2e8f0\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" font-size=\"10\" fill=\"#64748b\" text-anchor=\"end\">{label}</text>",
            yy = y(share),
            tx = LEFT - 6.0,
            ty = y(share) + 3.5,
        );
    }
    for (at, label, anchor) in [
        (start, "−60 min", "start"),
        (start + 1800, "−30 min", "middle"),
        (now, "now", "end"),
    ] {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" fill=\"#64748b\" text-anchor=\"{anchor}\">{label}</text>",
            x(at),
            H - 4.0
        );
    }
    type Series = (&'static str, &'static str, fn(&Point) -> f64);
    let series: [Series; 3] = [
        ("cpu", "#2563eb", |p| p.cpu),
        ("memory", "#16a34a", |p| p.memory),
        ("disk", "#d97706", |p| p.disk),
    ];
    for (name, colour, value) in series {
        let recent: Vec<&Point> = points.iter().filter(|p| p.at >= start).collect();
        if recent.len() == 1 {
            let p = recent[0];
            let _ = write!(
                svg,
                "<circle class=\"series-{name}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{colour}\"/>",
                x(p.at),
                y(value(p))
            );
            continue;
        }
        let coords: Vec<String> = recent
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.at), y(value(p))))
            .collect();
        if !coords.is_empty() {
            let _ = write!(
                svg,
                "<polyline class=\"series-{name}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.8\" \
                 stroke-linejoin=\"round\" points=\"{}\"/>",
                coords.join(" ")
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_elements_and_attributes() {
        assert_eq!(
            esc("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
        assert_eq!(esc("plain text"), "plain text");
        assert_eq!(esc("día ✓"), "día ✓");
    }

    #[test]
    fn the_frame_escapes_who_and_title() {
        let html = page(
            &Frame {
                title: "<b>t</b>",
                who: Some(("eve\"><script>", "viewer")),
                csrf: Some("abc"),
                poll_ms: Some(2000),
            },
            "<p>body</p>",
        );
        assert!(!html.contains("<b>t</b>") && html.contains("&lt;b&gt;t&lt;/b&gt;"));
        assert!(!html.contains("eve\"><script>"));
        assert!(html.contains("eve&quot;&gt;&lt;script&gt;"));
        assert!(html.contains("<p>body</p>") && html.contains("data-poll=\"2000\""));
        assert!(html.contains("name=\"csrf-token\" content=\"abc\""));
    }

    #[test]
    fn the_chart_places_points_in_the_last_hour() {
        let now = 10_000;
        let p = |at, share| Point {
            at,
            cpu: share,
            memory: share,
            disk: share,
            memory_total: 1,
            disk_total: 1,
        };
        let svg = host_chart(&[p(now - 7200, 1.0), p(now - 3600, 0.0), p(now, 1.0)], now);
        // The sample from two hours ago is left out; the others span the width.
        assert!(svg.contains("points=\"40.0,150.0 590.0,10.0\""), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 3);
        let one = host_chart(&[p(now, 0.5)], now);
        assert_eq!(one.matches("<circle").count(), 3);
        assert!(host_chart(&[], now).starts_with("<svg"));
    }

    #[test]
    fn ages_and_sizes() {
        assert_eq!(age(42), "42s");
        assert_eq!(age(3725), "1h 2m");
        assert_eq!(age(-5), "0s");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(bytes(5 << 20), "5 MiB");
    }
}
