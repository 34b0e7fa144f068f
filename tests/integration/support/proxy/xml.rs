//! String-level surgery on moto's EC2 response XML: the instance IDs a
//! `RunInstancesResponse` launched, and a `DescribeInstancesResponse` with
//! some instances taken out.
//!
//! Not an XML parser: a scanner that finds elements by name among the
//! children of an element, counting nesting (EC2's `<item>` nests inside
//! `<item>`), which is all moto's stable, attribute-free output needs. Text
//! never contains a raw `<` (it is escaped), so every `<` starts markup.
//! Anything unexpected yields `None` and the caller leaves the body alone.

use std::ops::Range;

/// One element: its byte range in the document, tags included, and the
/// range of its content.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Element {
    name: String,
    outer: Range<usize>,
    inner: Range<usize>,
}

/// The child elements of the content `within` of `xml`, in order.
fn children(xml: &str, within: Range<usize>) -> Option<Vec<Element>> {
    let mut out = Vec::new();
    // The open child: name, start of its tag, end of its tag.
    let mut open: Option<(String, usize, usize)> = None;
    let mut depth = 0usize;
    let mut pos = within.start;
    while let Some(offset) = xml[pos..within.end].find('<') {
        let start = pos + offset;
        let rest = &xml[start..within.end];
        if rest.starts_with("<!--") {
            pos = start + rest.find("-->")? + 3;
            continue;
        }
        let end = start + tag_end(rest)?;
        let tag = &xml[start + 1..end - 1];
        pos = end;
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            depth = depth.checked_sub(1)?;
            if depth == 0 {
                let (open_name, open_start, open_end) = open.take()?;
                if open_name != name.trim() {
                    return None;
                }
                out.push(Element {
                    name: open_name,
                    outer: open_start..end,
                    inner: open_end..start,
                });
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let name = tag
            .trim_end_matches('/')
            .split_whitespace()
            .next()?
            .to_string();
        if depth == 0 {
            if self_closing {
                out.push(Element {
                    name,
                    outer: start..end,
                    inner: end..end,
                });
            } else {
                open = Some((name, start, end));
                depth = 1;
            }
        } else if !self_closing {
            depth += 1;
        }
    }
    (depth == 0).then_some(out)
}

/// The length of the tag at the start of `text` (up to and including its
/// `>`, skipping quoted attribute values).
fn tag_end(text: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

fn child(xml: &str, parent: &Element, name: &str) -> Option<Element> {
    children(xml, parent.inner.clone())?
        .into_iter()
        .find(|e| e.name == name)
}

fn items(xml: &str, set: &Element) -> Option<Vec<Element>> {
    Some(
        children(xml, set.inner.clone())?
            .into_iter()
            .filter(|e| e.name == "item")
            .collect(),
    )
}

fn root(xml: &str) -> Option<Element> {
    children(xml, 0..xml.len())?.into_iter().next()
}

fn instance_id<'a>(xml: &'a str, instance: &Element) -> Option<&'a str> {
    let id = child(xml, instance, "instanceId")?;
    Some(xml[id.inner].trim())
}

/// The instance IDs in a `RunInstancesResponse`.
pub fn launched_instances(xml: &str) -> Option<Vec<String>> {
    let root = root(xml)?;
    let set = child(xml, &root, "instancesSet")?;
    items(xml, &set)?
        .iter()
        .map(|i| instance_id(xml, i).map(str::to_string))
        .collect()
}

/// A `DescribeInstancesResponse` without the instances for which `hide`
/// is true; reservations left without instances are dropped as well.
/// Returns the new document and how many instances were removed.
pub fn without_instances(xml: &str, hide: impl Fn(&str) -> bool) -> Option<(String, usize)> {
    let root = root(xml)?;
    let reservations = child(xml, &root, "reservationSet")?;
    let mut cut: Vec<Range<usize>> = Vec::new();
    let mut removed = 0;
    for reservation in items(xml, &reservations)? {
        let Some(set) = child(xml, &reservation, "instancesSet") else {
            continue;
        };
        let instances = items(xml, &set)?;
        let mut hidden = Vec::new();
        for instance in &instances {
            if hide(instance_id(xml, instance)?) {
                hidden.push(instance.outer.clone());
            }
        }
        removed += hidden.len();
        if !instances.is_empty() && hidden.len() == instances.len() {
            cut.push(reservation.outer.clone());
        } else {
            cut.extend(hidden);
        }
    }
    let mut out = String::with_capacity(xml.len());
    let mut pos = 0;
    for range in cut {
        out.push_str(&xml[pos..range.start]);
        pos = range.end;
    }
    out.push_str(&xml[pos..]);
    Some((out, removed))
}

/// A `DescribeInstancesResponse` in which the instances for which `pick`
/// is true report state `code`/`name` (e.g. 32, `shutting-down`). Returns
/// the new document and how many instances were rewritten.
pub fn with_state(
    xml: &str,
    pick: impl Fn(&str) -> bool,
    code: u16,
    name: &str,
) -> Option<(String, usize)> {
    let root = root(xml)?;
    let reservations = child(xml, &root, "reservationSet")?;
    let mut states: Vec<Range<usize>> = Vec::new();
    for reservation in items(xml, &reservations)? {
        let Some(set) = child(xml, &reservation, "instancesSet") else {
            continue;
        };
        for instance in items(xml, &set)? {
            if pick(instance_id(xml, &instance)?) {
                states.push(child(xml, &instance, "instanceState")?.inner);
            }
        }
    }
    let state = format!("<code>{code}</code><name>{name}</name>");
    let mut out = String::with_capacity(xml.len());
    let mut pos = 0;
    for range in &states {
        out.push_str(&xml[pos..range.start]);
        out.push_str(&state);
        pos = range.end;
    }
    out.push_str(&xml[pos..]);
    Some((out, states.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from moto 5.2.5: one RunInstances of two tagged instances.
    const RUN: &str = include_str!("testdata/run_instances.xml");
    /// Captured from moto 5.2.5 right after: that reservation and a second
    /// one of one instance.
    const DESCRIBE: &str = include_str!("testdata/describe_instances.xml");
    const PAIR: [&str; 2] = ["i-8c0d3620e0a267a45", "i-29dc292b0a62d246e"];
    const SINGLE: &str = "i-546c4f28f19ed1ee8";

    fn reservation_ids(xml: &str) -> Vec<String> {
        let root = root(xml).unwrap();
        let set = child(xml, &root, "reservationSet").unwrap();
        items(xml, &set)
            .unwrap()
            .iter()
            .map(|r| xml[child(xml, r, "reservationId").unwrap().inner].to_string())
            .collect()
    }

    fn described(xml: &str) -> Vec<String> {
        let root = root(xml).unwrap();
        let set = child(xml, &root, "reservationSet").unwrap();
        let mut ids = Vec::new();
        for r in items(xml, &set).unwrap() {
            let instances = child(xml, &r, "instancesSet").unwrap();
            for i in items(xml, &instances).unwrap() {
                ids.push(instance_id(xml, &i).unwrap().to_string());
            }
        }
        ids
    }

    fn common_len(a: impl Iterator<Item = u8>, b: impl Iterator<Item = u8>) -> usize {
        a.zip(b).take_while(|(x, y)| x == y).count()
    }

    #[test]
    fn launched_instances_are_the_reservations_own_not_nested_ids() {
        assert_eq!(launched_instances(RUN).unwrap(), PAIR);
        // The nested blockDeviceMapping/networkInterfaceSet items carry no
        // instanceId of their own, but the scanner must not stop at them.
        assert_eq!(described(DESCRIBE), [PAIR[0], PAIR[1], SINGLE]);
    }

    #[test]
    fn hiding_one_of_a_pair_keeps_the_reservation() {
        let (xml, removed) = without_instances(DESCRIBE, |id| id == PAIR[1]).unwrap();
        assert_eq!(removed, 1);
        assert_eq!(described(&xml), [PAIR[0], SINGLE]);
        assert_eq!(reservation_ids(&xml).len(), 2);
        // One contiguous cut: everything else is untouched.
        let prefix = common_len(xml.bytes(), DESCRIBE.bytes());
        let suffix = common_len(xml.bytes().rev(), DESCRIBE.bytes().rev());
        assert!(prefix + suffix >= xml.len());
        assert!(!xml.contains(PAIR[1]));
    }

    #[test]
    fn hiding_a_whole_reservation_drops_it() {
        let (xml, removed) = without_instances(DESCRIBE, |id| PAIR.contains(&id)).unwrap();
        assert_eq!(removed, 2);
        assert_eq!(described(&xml), [SINGLE]);
        assert_eq!(reservation_ids(&xml), ["r-7c15f6a21da2f86de"]);
    }

    #[test]
    fn hiding_everything_leaves_an_empty_reservation_set() {
        let (xml, removed) = without_instances(DESCRIBE, |_| true).unwrap();
        assert_eq!(removed, 3);
        assert!(xml.contains("<reservationSet></reservationSet>"), "{xml}");
        assert!(described(&xml).is_empty());
    }

    #[test]
    fn hiding_nothing_changes_nothing() {
        let (xml, removed) = without_instances(DESCRIBE, |_| false).unwrap();
        assert_eq!((xml.as_str(), removed), (DESCRIBE, 0));
        let empty = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<DescribeInstancesResponse \
                     xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15\"><reservationSet/>\
                     <requestId>request-id</requestId></DescribeInstancesResponse>";
        assert_eq!(
            without_instances(empty, |_| true).unwrap(),
            (empty.into(), 0)
        );
    }

    #[test]
    fn malformed_documents_are_refused_not_mangled() {
        let truncated = &DESCRIBE[..DESCRIBE.len() / 2];
        assert_eq!(without_instances(truncated, |_| true), None);
        assert_eq!(
            launched_instances("<RunInstancesResponse><instancesSet>"),
            None
        );
        assert_eq!(
            without_instances("<a><reservationSet><item></b></reservationSet></a>", |_| {
                true
            }),
            None
        );
    }

    #[test]
    fn comments_declarations_and_quoted_attributes_are_skipped() {
        let xml = "<?xml version=\"1.0\"?><!-- <item> --><R a=\"x>y\"><instancesSet>\
                   <item><instanceId> i-1 </instanceId></item><item><instanceId>i-2</instanceId>\
                   </item></instancesSet></R>";
        assert_eq!(launched_instances(xml).unwrap(), ["i-1", "i-2"]);
    }

    #[test]
    fn chosen_instances_report_another_state() {
        let (out, n) = with_state(DESCRIBE, |id| id == SINGLE, 32, "shutting-down").unwrap();
        assert_eq!(n, 1);
        assert_eq!(described(&out), described(DESCRIBE), "every instance stays");
        assert_eq!(out.matches("<name>shutting-down</name>").count(), 1);
        assert!(out.contains(&format!(
            "<instanceId>{SINGLE}</instanceId><imageId>ami-03cf127a</imageId><instanceState><code>32</code><name>shutting-down</name></instanceState>"
        )));
        let (same, none) = with_state(DESCRIBE, |_| false, 32, "shutting-down").unwrap();
        assert_eq!((same.as_str(), none), (DESCRIBE, 0));
    }
}
