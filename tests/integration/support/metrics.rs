//! Reading the operator's `/metrics`: one sample by its exact series, and the
//! Kubernetes API requests it counted (`mcm_kube_requests_total`).

use std::collections::BTreeMap;

use mcm_provider_aws::kube_metrics::is_write;

/// The value of the sample `series` (name and labels, exactly) in `metrics`.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The value of a label in a series line (`name{a="x",b="y"} 3`).
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// Requests to the API servers by `verb resource` (both clusters summed).
pub fn kube_requests(metrics: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("mcm_kube_requests_total{"))
    {
        let (Some(verb), Some(resource), Some(value)) = (
            label(line, "verb"),
            label(line, "resource"),
            line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
        ) else {
            continue;
        };
        *out.entry(format!("{verb} {resource}")).or_default() += value;
    }
    out
}

/// The writes among [`kube_requests`] (verbs other than get, list, watch).
pub fn kube_writes(metrics: &str) -> BTreeMap<String, f64> {
    kube_requests(metrics)
        .into_iter()
        .filter(|(k, _)| k.split(' ').next().is_some_and(is_write))
        .collect()
}

/// `after - before`, per key, dropping keys that did not move.
pub fn delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect()
}
