//! Figures, medians, ratios, the table and the JSON of `sockshare bench`.

use std::fmt::Write as _;

use super::worker::CHUNK;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Figure {
    pub ops_per_s: f64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub count: u64,
    pub bytes_per_pending: Option<f64>,
}

impl Figure {
    /// Combines the `result FIRST LAST COUNT SAMPLE...` lines of a run's measuring
    /// processes: the span runs from the earliest first to the latest last handoff.
    pub fn from_results(results: &[Vec<String>]) -> Result<Figure> {
        let (mut first, mut last, mut count) = (u64::MAX, 0, 0);
        let mut samples = Vec::new();
        for words in results {
            let mut nums = words.iter().map(|w| w.parse::<u64>());
            let mut next = || nums.next().ok_or("short result line");
            first = first.min(next()??);
            last = last.max(next()??);
            count += next()??;
            for n in nums {
                samples.push(n?);
            }
        }
        if samples.is_empty() || last <= first {
            return Err("a run measured nothing".into());
        }
        samples.sort_unstable();
        Ok(Figure {
            ops_per_s: count as f64 * 1e9 / (last - first) as f64,
            p50_ns: percentile(&samples, 0.50).unwrap_or_default(),
            p99_ns: percentile(&samples, 0.99).unwrap_or_default(),
            count,
            bytes_per_pending: None,
        })
    }
}

/// The `p` quantile (0 to 1) of sorted samples, by nearest rank: the smallest sample with
/// at least `p` of them at or below it. `None` for no samples. Every bench uses this one.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let rank = (sorted.len() as f64 * p).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// The median of repetitions (the upper one of an even count).
pub fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_u(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// One line of the table: the medians of a variant's repetitions in one scenario.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub variant: String,
    pub handoffs: u64,
    pub reps: usize,
    pub ops_per_s: Option<f64>,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub bytes_per_pending: Option<f64>,
    pub ratio: Option<f64>,
    /// Which figure the ratio compares (`ops_per_s` or `p50_ns`) and to what.
    pub ratio_of: &'static str,
    pub baseline: String,
}

impl Row {
    pub fn new(scenario: String, variant: &str, figs: &[Figure]) -> Row {
        Row {
            scenario,
            variant: variant.to_owned(),
            handoffs: figs.iter().map(|f| f.count).min().unwrap_or(0),
            reps: figs.len(),
            ops_per_s: Some(median_f(figs.iter().map(|f| f.ops_per_s).collect())),
            p50_ns: Some(median_u(figs.iter().map(|f| f.p50_ns).collect())),
            p99_ns: Some(median_u(figs.iter().map(|f| f.p99_ns).collect())),
            bytes_per_pending: None,
            ratio: None,
            ratio_of: "",
            baseline: String::new(),
        }
        .with_memory(figs)
    }

    fn with_memory(mut self, figs: &[Figure]) -> Row {
        let mem: Vec<f64> = figs.iter().filter_map(|f| f.bytes_per_pending).collect();
        if !mem.is_empty() {
            self.bytes_per_pending = Some(median_f(mem));
        }
        self
    }
}

/// Ratios: throughput against `raw` of the same scenario; round-trip p50 against `raw`'s;
/// redeem p50 against the redeem with one pending info. Memory gets rows of its own.
pub fn fill_ratios(rows: &mut Vec<Row>) {
    let find = |rows: &[Row], scenario: &str, variant: &str| {
        rows.iter()
            .find(|r| r.scenario == scenario && r.variant == variant)
            .cloned()
    };
    let snapshot = rows.clone();
    for row in rows.iter_mut() {
        if row.scenario.starts_with("redeem/") {
            if let Some(base) = find(&snapshot, "redeem/pending=1", &row.variant) {
                row.ratio = ratio(row.p50_ns, base.p50_ns);
                row.ratio_of = "p50_ns";
                row.baseline = format!("{} {}", base.scenario, base.variant);
            }
        } else if let Some(base) = find(&snapshot, &row.scenario, "raw") {
            if row.scenario == "round-trip" {
                row.ratio = ratio(row.p50_ns, base.p50_ns);
                row.ratio_of = "p50_ns";
            } else {
                row.ratio = base.ops_per_s.zip(row.ops_per_s).map(|(b, r)| r / b);
                row.ratio_of = "ops_per_s";
            }
            row.baseline = "raw".into();
        }
    }
    let memory: Vec<Row> = snapshot
        .iter()
        .filter(|r| r.bytes_per_pending.is_some() && !r.scenario.ends_with("pending=1"))
        .map(|r| Row {
            scenario: r.scenario.replace("redeem/", "memory/"),
            ops_per_s: None,
            p50_ns: None,
            p99_ns: None,
            ratio: None,
            ratio_of: "",
            baseline: String::new(),
            ..r.clone()
        })
        .collect();
    for row in rows.iter_mut() {
        row.bytes_per_pending = None;
    }
    rows.extend(memory);
}

fn ratio(value: Option<u64>, base: Option<u64>) -> Option<f64> {
    match (value, base) {
        (Some(v), Some(b)) if b > 0 => Some(v as f64 / b as f64),
        _ => None,
    }
}

/// The targets of issue 4 (listed in docs/benchmarks.md), checked against the rows.
fn verdicts(rows: &[Row]) -> Vec<String> {
    let get = |s: &str, v: &str| rows.iter().find(|r| r.scenario == s && r.variant == v);
    let mut out = Vec::new();
    let mut check = |what: &str, got: Option<f64>, ok: fn(f64) -> bool, unit: &str| {
        let line = match got {
            Some(g) => format!(
                "{} {what}: {g:.2}{unit}",
                if ok(g) { "MET " } else { "MISS" }
            ),
            None => format!("n/a  {what}: not measured in this run"),
        };
        out.push(line);
    };
    let ratio = |s: &str, v: &str| get(s, v).and_then(|r| r.ratio);
    check(
        "channel throughput >= 0.9x raw",
        ratio("throughput", "channel"),
        |g| g >= 0.9,
        "x",
    );
    check(
        "channel round-trip p50 <= 1.1x raw",
        ratio("round-trip", "channel"),
        |g| g <= 1.1,
        "x",
    );
    check(
        "pipe throughput >= 0.6x raw",
        ratio("throughput", "pipe"),
        |g| g >= 0.6,
        "x",
    );
    // 100,000 pending when the target may hold that many descriptors, else the most it may.
    let largest = rows
        .iter()
        .filter_map(|r| r.scenario.strip_prefix("redeem/pending="))
        .filter_map(|n| n.parse::<u64>().ok())
        .max()
        .unwrap_or(100_000);
    let redeem = format!("redeem/pending={largest}");
    let memory = format!("memory/pending={largest}");
    check(
        &format!("redeem p50 at {largest} pending <= 1.2x at 1"),
        ratio(&redeem, "pipe"),
        |g| g <= 1.2,
        "x",
    );
    check(
        &format!("memory per pending info < 1 KiB (at {largest} pending)"),
        get(&memory, "pipe").and_then(|r| r.bytes_per_pending),
        |g| g < 1024.0,
        " B",
    );
    check(
        "batch descriptors/s >= 2x raw",
        ratio("throughput", "batch"),
        |g| g >= 2.0,
        "x",
    );
    out
}

pub fn print_table(rows: &[Row], mode: &str, reps: u32, count: u64) {
    println!(
        "sockshare bench ({mode}: {count} handoffs per figure, median of {reps} repetitions; \
         {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| scenario | variant | ops/s | p50 ns | p99 ns | ratio | of | B/pending |\n\
         |---|---|---:|---:|---:|---:|---|---:|"
    );
    let opt_u = |v: Option<u64>| v.map_or("".into(), |v| v.to_string());
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.variant,
            r.ops_per_s.map_or("".into(), |v| format!("{v:.0}")),
            opt_u(r.p50_ns),
            opt_u(r.p99_ns),
            r.ratio.map_or("".into(), |v| format!("{v:.2}")),
            if r.ratio_of.is_empty() {
                String::new()
            } else {
                format!("{} vs {}", r.ratio_of, r.baseline)
            },
            r.bytes_per_pending.map_or("".into(), |v| format!("{v:.0}")),
        );
    }
    println!();
    println!(
        "throughput/sources/targets: pipelined handoffs, ops/s over all links; p50/p99 are \
         per-handoff times of one link over chunks of {CHUNK}. round-trip: duplicate, info to \
         the target, create, acknowledge. redeem: one Session::redeem beside N pending infos."
    );
    println!();
    for v in verdicts(rows) {
        println!("{v}");
    }
}

fn json_num<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("null".into(), |v| v.to_string())
}

pub(super) fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The rows as a JSON array of objects.
pub fn json(rows: &[Row]) -> String {
    let mut out = String::from("[\n");
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {{\"scenario\": {}, \"variant\": {}, \"handoffs\": {}, \"reps\": {}, \
             \"ops_per_s\": {}, \"p50_ns\": {}, \"p99_ns\": {}, \"ratio_to_raw\": {}, \
             \"ratio_of\": {}, \"baseline\": {}, \"bytes_per_pending\": {}}}{}",
            json_str(&r.scenario),
            json_str(&r.variant),
            r.handoffs,
            r.reps,
            json_num(r.ops_per_s.map(|v| format!("{v:.1}"))),
            json_num(r.p50_ns),
            json_num(r.p99_ns),
            json_num(r.ratio.map(|v| format!("{v:.4}"))),
            if r.ratio_of.is_empty() {
                "null".into()
            } else {
                json_str(r.ratio_of)
            },
            if r.baseline.is_empty() {
                "null".into()
            } else {
                json_str(&r.baseline)
            },
            json_num(r.bytes_per_pending.map(|v| format!("{v:.1}"))),
            if i + 1 < rows.len() { "," } else { "" }
        );
    }
    out.push_str("]\n");
    out
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_by_nearest_rank() {
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 0.50), Some(50));
        assert_eq!(percentile(&hundred, 0.99), Some(99));
        assert_eq!(percentile(&hundred, 1.0), Some(100));
        assert_eq!(percentile(&hundred, 0.0), Some(1));
        assert_eq!(percentile(&[7u64], 0.99), Some(7));
        assert_eq!(percentile::<u64>(&[], 0.5), None);
    }
}
