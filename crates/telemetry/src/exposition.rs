//! A strict parser of the OpenMetrics 1.0 text format (what `/metrics`
//! serves), for tests: it rejects what a lenient scraper would let through
//! (a family declared twice or interleaved, a sample of the wrong family,
//! bad escapes, duplicate series, histogram buckets out of order or not
//! cumulative, a missing `# EOF`), and checks the conventions Rackline's
//! metrics promise (`rackline_` prefix, counters ending in `_total`).
//!
//! Written here rather than taken from a crate: the one maintained Rust
//! parser of this format (`prometheus-parse`) is deliberately lenient, which
//! is the opposite of what a test of the format needs.

use std::collections::{BTreeMap, HashSet};

/// One metric family: its declared type, help and samples, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    /// `counter`, `gauge`, `histogram`, `info`, …
    pub kind: String,
    pub help: String,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's own name (`<family>_total`, `<family>_bucket`, …).
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub families: Vec<Family>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {msg}")]
pub struct ParseError {
    pub line: usize,
    pub msg: String,
}

const TYPES: [&str; 8] = [
    "counter",
    "gauge",
    "histogram",
    "gaugehistogram",
    "stateset",
    "info",
    "summary",
    "unknown",
];

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn parse_number(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s.is_empty()
            || s.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
        {
            None
        }
        _ => s.parse().ok(),
    }
}

/// The sample names a family of `kind` may contain.
fn allowed_suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" | "gaugehistogram" => {
            &["_bucket", "_count", "_sum", "_created", "_gcount", "_gsum"]
        }
        "summary" => &["", "_count", "_sum", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

/// Parses `{a="x",b="y"}` starting at `s` (which begins with `{`); returns
/// the labels and the rest after `}`.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = &s[1..];
    if let Some(r) = rest.strip_prefix('}') {
        return Ok((labels, r));
    }
    loop {
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name} value is not quoted"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {name} value is not terminated")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("invalid escape in label {name}: {other:?}")),
                },
                Some((_, '\n')) => return Err("raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} given twice"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
            continue;
        }
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        return Err("expected ',' or '}' after a label".into());
    }
}

/// Parses a whole exposition strictly (see the module docs).
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let err = |line: usize, msg: String| ParseError { line, msg };
    if !text.ends_with('\n') {
        return Err(err(0, "the exposition does not end with a newline".into()));
    }
    let mut p = Parser::default();
    let mut eof = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if eof {
            return Err(err(n, "content after # EOF".into()));
        }
        if line == "# EOF" {
            eof = true;
        } else if let Some(meta) = line.strip_prefix("# ") {
            p.metadata(meta).map_err(|m| err(n, m))?;
        } else if line.is_empty() || line.starts_with('#') {
            return Err(err(n, "empty line or bare comment".into()));
        } else {
            p.sample(line).map_err(|m| err(n, m))?;
        }
    }
    if !eof {
        return Err(err(text.lines().count(), "missing # EOF".into()));
    }
    for f in &p.out.families {
        if f.kind == "histogram" {
            check_histogram(f).map_err(|m| err(0, m))?;
        }
    }
    Ok(p.out)
}

/// What the lines read so far have declared.
#[derive(Default)]
struct Parser {
    out: Exposition,
    /// Every family name declared, to refuse a second declaration.
    seen: HashSet<String>,
    /// Every (sample name, labels), to refuse a duplicate series.
    series: HashSet<(String, BTreeMap<String, String>)>,
}

impl Parser {
    /// `# TYPE|HELP|UNIT name [arg]`.
    fn metadata(&mut self, meta: &str) -> Result<(), String> {
        let mut parts = meta.splitn(3, ' ');
        let (kw, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let arg = parts.next();
        if !is_metric_name(name) {
            return Err(format!("invalid metric name {name:?}"));
        }
        if !["TYPE", "HELP", "UNIT"].contains(&kw) {
            return Err(format!("unknown comment {kw:?}"));
        }
        // Metadata of a family may come in any order, before its samples; a
        // name not seen yet starts a new family.
        let current = self.out.families.last().is_some_and(|f| f.name == name);
        if !current {
            if !self.seen.insert(name.to_string()) {
                return Err(format!("family {name} declared twice (or interleaved)"));
            }
            self.out.families.push(Family {
                name: name.to_string(),
                kind: String::new(),
                help: String::new(),
                samples: Vec::new(),
            });
        }
        let f = self.out.families.last_mut().expect("pushed above");
        if !f.samples.is_empty() {
            return Err(format!("{kw} of {name} after its samples"));
        }
        match kw {
            "TYPE" => {
                let kind = arg.unwrap_or("");
                if !TYPES.contains(&kind) {
                    return Err(format!("unknown type {kind:?}"));
                }
                if !f.kind.is_empty() {
                    return Err(format!("family {name} declared twice (or interleaved)"));
                }
                f.kind = kind.to_string();
            }
            "HELP" => {
                if !f.help.is_empty() {
                    return Err(format!("second HELP for {name}"));
                }
                f.help = arg.unwrap_or("").to_string();
            }
            _ => {
                if !name.ends_with(&format!("_{}", arg.unwrap_or(""))) {
                    return Err(format!("unit {arg:?} is not a suffix of {name}"));
                }
            }
        }
        Ok(())
    }

    /// `name[{labels}] value [timestamp] [# exemplar]`, in the current family.
    fn sample(&mut self, line: &str) -> Result<(), String> {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(format!("invalid sample name {name:?}"));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..])?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value = sample_value(rest)?;
        let Some(fam) = self.out.families.last_mut() else {
            return Err(format!("sample {name} before any # TYPE"));
        };
        if fam.kind.is_empty() {
            fam.kind = "unknown".into();
        }
        let suffix = name
            .strip_prefix(fam.name.as_str())
            .filter(|s| allowed_suffixes(&fam.kind).contains(s));
        if suffix.is_none() {
            return Err(format!(
                "sample {name} does not belong to {} family {}",
                fam.kind, fam.name
            ));
        }
        if fam.kind == "counter" && name.ends_with("_total") && (value < 0.0 || value.is_nan()) {
            return Err(format!("counter {name} is {value}"));
        }
        if !self.series.insert((name.to_string(), labels.clone())) {
            return Err(format!("duplicate series {name}{labels:?}"));
        }
        fam.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
        Ok(())
    }
}

/// The value after a sample's name and labels: ` value [timestamp]`, an
/// exemplar (`# {…} v`) allowed after it.
fn sample_value(rest: &str) -> Result<f64, String> {
    let rest = rest
        .strip_prefix(' ')
        .ok_or_else(|| "no space before the value".to_string())?;
    let rest = rest.split(" # ").next().unwrap_or(rest);
    let mut fields = rest.split(' ');
    let value_s = fields.next().unwrap_or("");
    let value = parse_number(value_s).ok_or_else(|| format!("invalid value {value_s:?}"))?;
    if let Some(ts) = fields.next() {
        parse_number(ts).ok_or_else(|| format!("invalid timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields after the timestamp".into());
    }
    Ok(value)
}

/// Buckets ascending by `le`, cumulative, ending in `+Inf` whose count
/// equals `_count`, per label set.
fn check_histogram(f: &Family) -> Result<(), String> {
    // Per label set (without `le`): the (le, count) buckets and `_count`.
    type Buckets = (Vec<(f64, f64)>, Option<f64>);
    let mut groups: BTreeMap<Vec<(String, String)>, Buckets> = BTreeMap::new();
    for s in &f.samples {
        let mut key: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| *k != "le")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        key.sort();
        let g = groups.entry(key).or_default();
        if s.name.ends_with("_bucket") {
            let le = s
                .labels
                .get("le")
                .and_then(|v| parse_number(v))
                .ok_or_else(|| format!("{}: bucket without a numeric le", f.name))?;
            g.0.push((le, s.value));
        } else if s.name.ends_with("_count") {
            g.1 = Some(s.value);
        }
    }
    for (labels, (buckets, count)) in groups {
        let mut prev = (f64::NEG_INFINITY, 0.0);
        for &(le, v) in &buckets {
            if le <= prev.0 || v < prev.1 {
                return Err(format!(
                    "{}{labels:?}: buckets not ascending or not cumulative at le={le}",
                    f.name
                ));
            }
            prev = (le, v);
        }
        if prev.0 != f64::INFINITY {
            return Err(format!("{}{labels:?}: no +Inf bucket", f.name));
        }
        if count != Some(prev.1) {
            return Err(format!(
                "{}{labels:?}: _count {count:?} differs from the +Inf bucket {}",
                f.name, prev.1
            ));
        }
    }
    Ok(())
}

impl Exposition {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// Every sample named `name` (a sample name, e.g. `x_total`).
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.families
            .iter()
            .flat_map(|f| f.samples.iter())
            .filter(move |s| s.name == name)
    }

    /// The value of the sample `name` whose labels include all of `labels`
    /// (exactly one must match; None when none does).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut m = self.samples(name).filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        });
        let first = m.next()?;
        if labels.len() == first.labels.len() || m.next().is_none() {
            Some(first.value)
        } else {
            None
        }
    }

    /// The sum over samples `name` whose labels include all of `labels`
    /// (0 when none matches).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Rackline's naming rules: every family starts with `rackline_` and
    /// has a help text; counters end in `_total` (their samples do, by the
    /// format); durations are in seconds; no label named like a pod or an
    /// address (unbounded cardinality).
    pub fn check_conventions(&self) -> Result<(), String> {
        for f in &self.families {
            if !f.name.starts_with("rackline_") {
                return Err(format!("{} lacks the rackline_ prefix", f.name));
            }
            if f.help.is_empty() {
                return Err(format!("{} has no help text", f.name));
            }
            if (f.name.contains("duration") || f.name.contains("latency"))
                && !f.name.ends_with("_seconds")
            {
                return Err(format!("{} is a duration not in seconds", f.name));
            }
            for s in &f.samples {
                for k in s.labels.keys() {
                    if [
                        "pod",
                        "address",
                        "ip",
                        "container",
                        "container_id",
                        "mac",
                        "uid",
                    ]
                    .contains(&k.as_str())
                    {
                        return Err(format!("{} has an unbounded label {k}", s.name));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP rackline_x_things Things.\n# TYPE rackline_x_things counter\nrackline_x_things_total{network=\"prod\",outcome=\"ok\"} 3\nrackline_x_things_total{network=\"a\\\"b\\\\c\",outcome=\"ok\"} 0\n# HELP rackline_x_up Up.\n# TYPE rackline_x_up gauge\nrackline_x_up 1\n# HELP rackline_x_duration_seconds Time.\n# TYPE rackline_x_duration_seconds histogram\nrackline_x_duration_seconds_sum 0.5\nrackline_x_duration_seconds_count 2\nrackline_x_duration_seconds_bucket{le=\"0.1\"} 1\nrackline_x_duration_seconds_bucket{le=\"+Inf\"} 2\n# EOF\n";

    #[test]
    fn accepts_a_well_formed_exposition() {
        let e = parse(GOOD).unwrap();
        assert_eq!(e.families.len(), 3);
        assert_eq!(
            e.value("rackline_x_things_total", &[("network", "prod")]),
            Some(3.0)
        );
        assert_eq!(
            e.value("rackline_x_things_total", &[("network", "a\"b\\c")]),
            Some(0.0)
        );
        assert_eq!(e.sum("rackline_x_things_total", &[("outcome", "ok")]), 3.0);
        assert_eq!(e.value("rackline_x_up", &[]), Some(1.0));
        e.check_conventions().unwrap();
    }

    #[test]
    fn rejects_what_a_lenient_parser_would_accept() {
        let cases = [
            (GOOD.replace("# EOF\n", ""), "missing # EOF"),
            (
                GOOD.replace("rackline_x_up 1", "rackline_x_upp 1"),
                "does not belong",
            ),
            (
                GOOD.replace("{le=\"0.1\"} 1", "{le=\"0.1\"} 3"),
                "not cumulative",
            ),
            (GOOD.replace("_count 2", "_count 5"), "differs"),
            (GOOD.replace("\\\"b", "\\tb"), "invalid escape"),
            (
                GOOD.replace("outcome=\"ok\"} 0", "outcome=\"ok\",outcome=\"x\"} 0"),
                "twice",
            ),
            (
                GOOD.replace("network=\"a\\\"b\\\\c\"", "network=\"prod\""),
                "duplicate series",
            ),
            (GOOD.replace("} 3", "} -3"), "counter"),
            (GOOD.replace("} 3", "} three"), "invalid value"),
            (format!("{GOOD}x 1\n"), "after # EOF"),
            (
                GOOD.replace("rackline_x_up 1", "rackline_x_up\t1"),
                "invalid sample name",
            ),
            (
                GOOD.replace("rackline_x_up 1", "rackline_x_up 1 12 x"),
                "trailing fields",
            ),
            (
                GOOD.replace("rackline_x_up 1", "rackline_x_up 1 soon"),
                "invalid timestamp",
            ),
            (
                GOOD.replace(
                    "# HELP rackline_x_up Up.",
                    "# HELP rackline_x_up Up.\n# HELP rackline_x_up Up.",
                ),
                "second HELP",
            ),
            (
                GOOD.replace(
                    "# TYPE rackline_x_up gauge",
                    "# TYPE rackline_x_things gauge",
                ),
                "declared twice",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text).expect_err(want);
            assert!(e.msg.contains(want), "{want}: got {e}");
        }
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse(&GOOD.replace("rackline_x_up 1", "rackline_x_up one")).unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        let e = parse(&GOOD.replace("# EOF\n", "# EOF\n\n")).unwrap_err();
        assert_eq!(e.line, 15, "{e}");
    }

    #[test]
    fn conventions_catch_unbounded_labels_and_prefixes() {
        let e = parse(&GOOD.replace("network=\"prod\"", "pod=\"web-0\"")).unwrap();
        assert!(e.check_conventions().unwrap_err().contains("pod"));
        let e = parse(&GOOD.replace("rackline_x_up", "x_up")).unwrap();
        assert!(e.check_conventions().unwrap_err().contains("prefix"));
    }
}
