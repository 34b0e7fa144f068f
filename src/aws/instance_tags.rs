//! An instance's tags as the instance view keeps them: sorted pairs of
//! interned strings.
//!
//! Every instance of a class carries the class's tags (cluster, role, team,
//! cost centre: often ten or more), so the view of a 10,000-instance fleet
//! would hold the same keys and values 10,000 times over, each pair a
//! `String` twice and a share of a B-tree node (~1.3 KB per instance).
//! Interned and in one sorted slice, a repeat costs two pointers.

use crate::intern::IStr;

/// See the module docs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceTags(Box<[(IStr, IStr)]>);

impl InstanceTags {
    /// The value of tag `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Every tag, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// These tags with `set` added (replacing equal keys) and `remove`
    /// taken away: what EC2 holds after a CreateTags and a DeleteTags.
    pub fn updated<K, V, R>(
        &self,
        set: impl IntoIterator<Item = (K, V)>,
        remove: impl IntoIterator<Item = R>,
    ) -> Self
    where
        K: AsRef<str>,
        V: AsRef<str>,
        R: AsRef<str>,
    {
        let remove: Vec<R> = remove.into_iter().collect();
        let gone = |k: &str| remove.iter().any(|r| r.as_ref() == k);
        let old = self.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let new = set
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()));
        old.chain(new).filter(|(k, _)| !gone(k)).collect()
    }
}

/// Collects tags; of two with the same key the last one wins.
impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for InstanceTags {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut v: Vec<(IStr, IStr)> = pairs
            .into_iter()
            .map(|(k, v)| (IStr::new(k.as_ref()), IStr::new(v.as_ref())))
            .collect();
        // A stable sort keeps equal keys in order; keep the last of each.
        v.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let mut out: Vec<(IStr, IStr)> = Vec::with_capacity(v.len());
        for pair in v {
            match out.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => out.push(pair),
            }
        }
        InstanceTags(out.into_boxed_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_found_by_key_and_listed_in_order() {
        let tags: InstanceTags = [("team", "a"), ("Name", "m1"), ("cost", "x")]
            .into_iter()
            .collect();
        assert_eq!(tags.get("Name"), Some("m1"));
        assert_eq!(tags.get("team"), Some("a"));
        assert_eq!(tags.get("missing"), None);
        assert!(tags.contains_key("cost"));
        let keys: Vec<&str> = tags.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["Name", "cost", "team"]);
        assert_eq!(tags.len(), 3);
    }

    #[test]
    fn an_update_sets_replaces_and_removes() {
        let tags: InstanceTags = [("a", "1"), ("b", "2"), ("c", "3")].into_iter().collect();
        let after = tags.updated([("b", "20"), ("d", "4")], ["c"]);
        let all: Vec<(&str, &str)> = after.iter().collect();
        assert_eq!(all, [("a", "1"), ("b", "20"), ("d", "4")]);
    }

    #[test]
    fn of_two_tags_with_one_key_the_last_wins() {
        let tags: InstanceTags = [("k", "1"), ("a", "x"), ("k", "2")].into_iter().collect();
        assert_eq!(tags.get("k"), Some("2"));
        assert_eq!(tags.len(), 2);
    }
}
