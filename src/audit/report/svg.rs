//! Inline SVG charts for the HTML report: horizontal bars for totals, lines for counts over
//! time. Plain markup (no script, no external font or style sheet); every label is escaped.

use std::fmt::Write;

use super::html::esc;

/// Colours of the series, in order (enough to tell six lines apart, also in greyscale print).
const PALETTE: [&str; 6] = [
    "#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#57606a",
];
/// Bars shown per chart; the rest are summed into one "other" bar.
const MAX_BARS: usize = 12;
/// Lines shown per chart; the rest are summed into "other".
const MAX_LINES: usize = 5;

/// The largest entries first, the rest summed into `(others)`.
fn top(items: &[(String, u64)], n: usize) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = items.to_vec();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if v.len() > n {
        let rest: u64 = v[n - 1..].iter().map(|e| e.1).sum();
        v.truncate(n - 1);
        v.push(("(others)".into(), rest));
    }
    v
}

/// Horizontal bars, one per `(label, count)`, largest first.
pub fn bars(title: &str, items: &[(String, u64)]) -> String {
    let items = top(items, MAX_BARS);
    let (w, row, label_w) = (640u64, 22u64, 260u64);
    let h = row * items.len().max(1) as u64 + 30;
    let max = items.iter().map(|e| e.1).max().unwrap_or(0).max(1);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" role="img" aria-label="{t}" width="{w}" height="{h}" viewBox="0 0 {w} {h}"><title>{t}</title>"#,
        t = esc(title)
    );
    if items.is_empty() {
        let _ = write!(s, r#"<text x="4" y="20" class="muted">none</text>"#);
    }
    for (i, (label, n)) in items.iter().enumerate() {
        let y = 6 + row * i as u64;
        let bw = (w - label_w - 60) * n / max;
        let shown: String = label.chars().take(38).collect();
        let _ = write!(
            s,
            r#"<text x="{lx}" y="{ty}" text-anchor="end">{l}</text><rect x="{label_w}" y="{y}" width="{bw}" height="{bh}" fill="{c}"><title>{full}: {n}</title></rect><text x="{nx}" y="{ty}">{n}</text>"#,
            lx = label_w - 6,
            ty = y + 14,
            l = esc(&shown),
            bh = row - 6,
            c = PALETTE[0],
            full = esc(label),
            nx = label_w + bw + 4,
        );
    }
    s.push_str("</svg>");
    s
}

/// One line per series over the buckets; `labels` are the buckets' start times.
pub fn lines(title: &str, labels: &[String], series: &[(String, Vec<u64>)]) -> String {
    let totals: Vec<(String, u64)> = series
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().sum()))
        .collect();
    let shown = top(&totals, MAX_LINES);
    let buckets = labels.len().max(1);
    let pick = |name: &str| -> Vec<u64> {
        if name == "(others)" {
            let kept: Vec<&str> = shown.iter().map(|e| e.0.as_str()).collect();
            let mut sum = vec![0u64; buckets];
            for (k, v) in series {
                if !kept.contains(&k.as_str()) {
                    for (i, n) in v.iter().enumerate().take(buckets) {
                        sum[i] += n;
                    }
                }
            }
            sum
        } else {
            series
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        }
    };
    let data: Vec<(String, Vec<u64>)> = shown.iter().map(|(k, _)| (k.clone(), pick(k))).collect();
    let max = data
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let (w, h, left, top_m, plot_h) = (640u64, 230u64, 40u64, 10u64, 150u64);
    let plot_w = w - left - 10;
    let step = plot_w / (buckets as u64).saturating_sub(1).max(1);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" role="img" aria-label="{t}" width="{w}" height="{h}" viewBox="0 0 {w} {h}"><title>{t}</title>"#,
        t = esc(title)
    );
    // Axes and the scale.
    let base = top_m + plot_h;
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{top_m}" x2="{left}" y2="{base}" stroke="#8c959f"/><line x1="{left}" y1="{base}" x2="{r}" y2="{base}" stroke="#8c959f"/><text x="{tx}" y="{ty}" text-anchor="end">{max}</text><text x="{tx}" y="{base}" text-anchor="end">0</text>"##,
        r = w - 10,
        tx = left - 4,
        ty = top_m + 10,
    );
    if let (Some(first), Some(last)) = (labels.first(), labels.last()) {
        let _ = write!(
            s,
            r#"<text x="{left}" y="{y}" class="muted">{a}</text><text x="{r}" y="{y}" text-anchor="end" class="muted">{b}</text>"#,
            y = base + 14,
            r = w - 10,
            a = esc(first),
            b = esc(last),
        );
    }
    for (i, (name, v)) in data.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let points: Vec<String> = v
            .iter()
            .enumerate()
            .map(|(j, n)| format!("{},{}", left + step * j as u64, base - plot_h * n / max))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{p}"><title>{t}</title></polyline>"#,
            p = points.join(" "),
            t = esc(name),
        );
        let ly = base + 30;
        let lx = left + 120 * i as u64;
        let label: String = name.chars().take(16).collect();
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{ry}" width="10" height="10" fill="{colour}"/><text x="{tx}" y="{ly}">{l}</text>"#,
            ry = ly - 9,
            tx = lx + 14,
            l = esc(&label),
        );
    }
    if data.is_empty() {
        let _ = write!(
            s,
            r#"<text x="{x}" y="80" class="muted">no calls</text>"#,
            x = left + 10
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_many_entries_fold_into_others() {
        let items: Vec<(String, u64)> = (0..20)
            .map(|i| (format!("<script>t{i}</script>"), 20 - i))
            .collect();
        let svg = bars("x", &items);
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;t0"));
        assert!(svg.contains("(others)"));
        let svg = lines(
            "calls <b>",
            &["a".into(), "b".into()],
            &[("<img src=x>".into(), vec![1, 2])],
        );
        assert!(!svg.contains("<img") && !svg.contains("<b>"), "{svg}");
    }
}
