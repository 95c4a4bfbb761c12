//! Where a key of the config file is written: the line and column of the value
//! at a key path (`backends[1].address`), for errors found after parsing (a
//! duplicate address, a file that cannot be read), which serde never sees.
//!
//! The text is read a second time, with the same limits, into a tree of
//! spanned nodes; a path that is not in the file (a missing key) is placed at
//! its nearest ancestor that is.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A line and a column, both counted from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spot {
    pub line: u64,
    pub column: u64,
}

impl Spot {
    pub(crate) fn of(l: serde_saphyr::Location) -> Option<Spot> {
        (l.line() > 0).then(|| Spot {
            line: l.line(),
            column: l.column(),
        })
    }
}

/// The positions of a file's values, by key path.
pub(crate) struct Locator {
    root: Spanned<Node>,
}

enum Node {
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Scalar,
}

impl Locator {
    /// `None` when the text does not parse (its error is reported instead).
    pub(crate) fn new(text: &str) -> Option<Locator> {
        let mut options = super::yaml_options();
        // A key set twice is kept twice, so that its path can be told.
        options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
        serde_saphyr::from_str_with_options::<Spanned<Node>>(text, options)
            .ok()
            .map(|root| Locator { root })
    }

    /// The path of the key written at `at` (`health.interval`), if one is.
    pub(crate) fn key_at(&self, at: Spot) -> Option<String> {
        fn walk(node: &Node, prefix: &str, at: Spot) -> Option<String> {
            match node {
                Node::Map(entries) => entries.iter().find_map(|(k, v)| {
                    let path = if prefix.is_empty() {
                        k.value.0.clone()
                    } else {
                        format!("{prefix}.{}", k.value.0)
                    };
                    if Spot::of(k.referenced) == Some(at) {
                        return Some(path);
                    }
                    walk(&v.value, &path, at)
                }),
                Node::Seq(items) => items
                    .iter()
                    .enumerate()
                    .find_map(|(i, v)| walk(&v.value, &format!("{prefix}[{i}]"), at)),
                Node::Scalar => None,
            }
        }
        walk(&self.root.value, "", at)
    }

    /// The position of the value at `path` (`a.b[2].c`), or of the nearest
    /// ancestor written in the file.
    pub(crate) fn find(&self, path: &str) -> Option<Spot> {
        let mut at = &self.root;
        let mut best = Spot::of(at.referenced);
        for step in steps(path) {
            let next = match (&at.value, step) {
                (Node::Map(entries), Step::Key(k)) => entries
                    .iter()
                    .find(|(key, _)| key.value.0 == k)
                    .map(|(_, v)| v),
                (Node::Seq(items), Step::Index(i)) => items.get(i),
                _ => None,
            };
            let Some(next) = next else { break };
            at = next;
            best = Spot::of(at.referenced).or(best);
        }
        best
    }
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `backends[1].tls.ca` as `backends`, 1, `tls`, `ca`.
fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some((index, tail)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                out.push(Step::Index(i));
            }
            rest = tail.strip_prefix('[').unwrap_or(tail);
        }
    }
    out
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Key>>()? {
            entries.push((key, map.next_value::<Spanned<Node>>()?));
        }
        Ok(Node::Map(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
}

/// A mapping key as text, whatever scalar it is written as.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
                Ok(Key(String::new()))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "listen: 127.0.0.1:5672\nbackends:\n  - name: a\n    address: 'h:1'\n  - {name: b, address: 'h:2'}\nhealth:\n  interval: 2s\n";

    fn at(path: &str) -> (u64, u64) {
        let s = Locator::new(TEXT)
            .expect("parses")
            .find(path)
            .expect("found");
        (s.line, s.column)
    }

    #[test]
    fn values_are_found_by_path() {
        assert_eq!(at("listen"), (1, 9));
        assert_eq!(at("backends[0].address"), (4, 14));
        assert_eq!(at("backends[1].name"), (5, 12));
        assert_eq!(at("health.interval"), (7, 13));
    }

    #[test]
    fn a_key_set_twice_is_named_by_its_position() {
        let l = Locator::new("health:\n  rise: 2\n  rise: 3\n").expect("parses");
        assert_eq!(
            l.key_at(Spot { line: 3, column: 3 }).as_deref(),
            Some("health.rise")
        );
        assert_eq!(l.key_at(Spot { line: 9, column: 1 }), None);
    }

    #[test]
    fn a_missing_key_is_placed_at_its_nearest_ancestor() {
        assert_eq!(at("health.timeout"), at("health"));
        assert_eq!(at("backends[5].name"), at("backends"));
        assert_eq!(at("admin.listen"), (1, 1));
    }
}
