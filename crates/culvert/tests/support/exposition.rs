//! A strict checker of the Prometheus text exposition format (0.0.4), for the tests that
//! scrape `/metrics`: every line is a HELP, a TYPE or a sample; each family has one HELP
//! and one TYPE before its samples, which come together; sample names fit the family's
//! type (a counter's end in `_total`, a histogram's are `_bucket`, `_sum` and `_count`);
//! label names and escapes are valid and no series appears twice; each histogram's
//! buckets have `le`, grow with it, end in `+Inf` and agree with `_count`.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One family as the checker saw it.
#[derive(Debug, Clone)]
pub struct ParsedFamily {
    /// `counter`, `gauge`, `histogram`, `summary` or `untyped`.
    pub kind: String,
    /// Samples: (sample name, labels, value).
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Parses `body`; returns its families by name, or the first problem with its line.
pub fn parse_exposition(body: &str) -> Result<BTreeMap<String, ParsedFamily>, String> {
    let mut families: BTreeMap<String, ParsedFamily> = BTreeMap::new();
    let mut helps = HashSet::new();
    let mut current: Option<String> = None;
    let mut closed = HashSet::new();
    let mut series = HashSet::new();
    for (i, line) in body.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _help) = rest.split_once(' ').unwrap_or((rest, ""));
            valid_metric_name(name).map_err(at)?;
            if !helps.insert(name.to_owned()) {
                return Err(at("a second HELP".into()));
            }
            if families.contains_key(name) {
                return Err(at("HELP after the family's TYPE".into()));
            }
            switch(&mut current, &mut closed, name).map_err(at)?;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("TYPE without a type".into()))?;
            valid_metric_name(name).map_err(at)?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("unknown type {kind:?}")));
            }
            if !helps.contains(name) {
                return Err(at("TYPE without a HELP before it".into()));
            }
            if families.contains_key(name) {
                return Err(at("a second TYPE".into()));
            }
            switch(&mut current, &mut closed, name).map_err(at)?;
            families.insert(
                name.to_owned(),
                ParsedFamily {
                    kind: kind.to_owned(),
                    samples: Vec::new(),
                },
            );
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            return Err(at("neither HELP, TYPE nor a sample".into()));
        }
        let (name, labels, value) = sample(line).map_err(at)?;
        let family = current
            .clone()
            .ok_or_else(|| at("a sample before any TYPE".into()))?;
        let f = families
            .get_mut(&family)
            .ok_or_else(|| at("a sample before its family's TYPE".into()))?;
        let fits = match f.kind.as_str() {
            "counter" => name == family && family.ends_with("_total"),
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name == format!("{family}{s}")),
            _ => name == family,
        };
        if !fits {
            return Err(at(format!("{name} is not a sample of {} {family}", f.kind)));
        }
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(at("a series twice".into()));
        }
        f.samples.push((name, labels, value));
    }
    for (name, f) in &families {
        if f.kind == "histogram" {
            histogram(name, f)?;
        }
    }
    if let Some(h) = helps.iter().find(|h| !families.contains_key(*h)) {
        return Err(format!("{h}: a HELP without a TYPE"));
    }
    Ok(families)
}

/// Moves to family `name`; its lines must not be split by another family's.
fn switch(
    current: &mut Option<String>,
    closed: &mut HashSet<String>,
    name: &str,
) -> Result<(), String> {
    if current.as_deref() == Some(name) {
        return Ok(());
    }
    if closed.contains(name) {
        return Err(format!("{name} continues after another family"));
    }
    if let Some(c) = current.take() {
        closed.insert(c);
    }
    *current = Some(name.to_owned());
    Ok(())
}

fn valid_metric_name(name: &str) -> Result<(), String> {
    let ok = name.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    if ok && !name.is_empty() {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn valid_label_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with("__")
        && name
            .chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit()))
}

/// `name{k="v",…} value`, with the label values unescaped.
fn sample(line: &str) -> Result<(String, BTreeMap<String, String>, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample without a value")?;
    let name = &line[..name_end];
    valid_metric_name(name)?;
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let end = parse_labels(r, &mut labels)?;
        rest = &r[end..];
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut parts = rest.split(' ');
    let value = parts.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(ts) = parts.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if parts.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok((name.to_owned(), labels, value))
}

/// The labels of a sample, `r` starting just past its `{`; returns the offset just past
/// the closing `}`.
fn parse_labels(r: &str, labels: &mut BTreeMap<String, String>) -> Result<usize, String> {
    if r.starts_with('}') {
        return Ok(1);
    }
    let mut at = 0;
    loop {
        let eq = r[at..].find('=').ok_or("a label without '='")? + at;
        let key = &r[at..eq];
        if !valid_label_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        if !r[eq + 1..].starts_with('"') {
            return Err("a label value without quotes".into());
        }
        let mut value = String::new();
        let mut it = r[eq + 2..].char_indices();
        let close = loop {
            match it.next().ok_or("unclosed label value")? {
                (i, '"') => break eq + 2 + i,
                (_, '\\') => match it.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, '\n') => return Err("a newline in a label value".into()),
                (_, c) => value.push(c),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        match r[close + 1..].chars().next() {
            Some(',') if r[close + 2..].starts_with('}') => return Err("a comma before '}'".into()),
            Some(',') => at = close + 2,
            Some('}') => return Ok(close + 2),
            _ => return Err("expected ',' or '}' after a label".into()),
        }
    }
}

/// Buckets per series: `le` on each, cumulative, ending at `+Inf` equal to `_count`, and
/// a `_sum`.
fn histogram(name: &str, f: &ParsedFamily) -> Result<(), String> {
    let mut buckets: HashMap<BTreeMap<String, String>, Vec<(f64, f64)>> = HashMap::new();
    let mut counts = HashMap::new();
    let mut sums = HashSet::new();
    for (sample, labels, v) in &f.samples {
        let mut key = labels.clone();
        if sample.ends_with("_bucket") {
            let le = key
                .remove("le")
                .ok_or_else(|| format!("{name}: a bucket without le"))?;
            let le = match le.as_str() {
                "+Inf" => f64::INFINITY,
                l => l.parse().map_err(|_| format!("{name}: bad le {l:?}"))?,
            };
            buckets.entry(key).or_default().push((le, *v));
        } else if sample.ends_with("_count") {
            counts.insert(format!("{key:?}"), *v);
        } else {
            sums.insert(format!("{key:?}"));
        }
    }
    if buckets.is_empty() {
        return Err(format!("{name}: a histogram without buckets"));
    }
    for (key, b) in buckets {
        let id = format!("{key:?}");
        if !b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1) {
            return Err(format!(
                "{name}{id}: buckets not cumulative in rising le: {b:?}"
            ));
        }
        let Some((last_le, last)) = b.last() else {
            continue;
        };
        if *last_le != f64::INFINITY {
            return Err(format!("{name}{id}: no +Inf bucket"));
        }
        if counts.get(&id) != Some(last) {
            return Err(format!(
                "{name}{id}: _count {:?} is not the +Inf bucket {last}",
                counts.get(&id)
            ));
        }
        if !sums.contains(&id) {
            return Err(format!("{name}{id}: no _sum"));
        }
    }
    Ok(())
}

/// Parses `body` or panics naming the problem (and showing the body).
pub fn assert_exposition(who: &str, body: &str) -> BTreeMap<String, ParsedFamily> {
    parse_exposition(body).unwrap_or_else(|e| panic!("{who}'s /metrics: {e}\n{body}"))
}
