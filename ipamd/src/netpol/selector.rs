//! Kubernetes label selectors (`matchLabels` + `matchExpressions`), with the
//! API server's semantics: every requirement must hold, an empty selector
//! selects everything.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `sel`. An operator the API server would have
/// rejected (validation makes this unreachable) selects nothing, so a
/// malformed policy can only allow less.
pub fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &sel.match_labels {
        if !ml.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    })
}

/// A canonical text form of a selector: equal for selectors that select the
/// same way regardless of value order, so two policies naming the same peers
/// share one address set.
pub fn canonical(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let mut values = e.values.clone().unwrap_or_default();
        values.sort();
        values.dedup();
        parts.push(format!("{} {} ({})", e.key, e.operator, values.join(",")));
    }
    parts.sort();
    parts.dedup();
    parts.join(";")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn every_operator_and_the_empty_selector() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(matches(&LabelSelector::default(), &l));
        assert!(matches(&LabelSelector::default(), &BTreeMap::new()));
        let sel = |exprs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: None,
            match_expressions: Some(exprs),
        };
        assert!(matches(&sel(vec![expr("app", "In", &["web", "db"])]), &l));
        assert!(!matches(&sel(vec![expr("app", "In", &["db"])]), &l));
        assert!(matches(&sel(vec![expr("app", "NotIn", &["db"])]), &l));
        assert!(matches(&sel(vec![expr("env", "NotIn", &["prod"])]), &l));
        assert!(!matches(&sel(vec![expr("app", "NotIn", &["web"])]), &l));
        assert!(matches(&sel(vec![expr("tier", "Exists", &[])]), &l));
        assert!(!matches(&sel(vec![expr("env", "Exists", &[])]), &l));
        assert!(matches(&sel(vec![expr("env", "DoesNotExist", &[])]), &l));
        assert!(!matches(&sel(vec![expr("app", "DoesNotExist", &[])]), &l));
        assert!(!matches(&sel(vec![expr("app", "Bogus", &["web"])]), &l));
        // matchLabels AND matchExpressions.
        let both = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![expr("tier", "In", &["back"])]),
        };
        assert!(!matches(&both, &l));
    }

    #[test]
    fn canonical_ignores_order() {
        let a = LabelSelector {
            match_labels: Some(labels(&[("a", "1"), ("b", "2")])),
            match_expressions: Some(vec![expr("c", "In", &["y", "x"])]),
        };
        let b = LabelSelector {
            match_labels: Some(labels(&[("b", "2"), ("a", "1")])),
            match_expressions: Some(vec![expr("c", "In", &["x", "y"])]),
        };
        assert_eq!(canonical(&a), canonical(&b));
        assert_ne!(canonical(&a), canonical(&LabelSelector::default()));
    }
}
