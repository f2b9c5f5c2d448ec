//! A rule's key/value configuration, read with typed getters that produce error messages
//! naming the key and what to fix.

use std::collections::BTreeMap;
use std::str::FromStr;

/// The config given to `configure`, consumed key by key.
#[derive(Debug)]
pub struct Config {
    entries: BTreeMap<String, String>,
    known: Vec<String>,
}

impl Config {
    /// Wraps the pairs; a key given twice is an error.
    pub fn new(pairs: Vec<(String, String)>) -> Result<Self, String> {
        let mut entries = BTreeMap::new();
        for (key, value) in pairs {
            if entries.insert(key.clone(), value).is_some() {
                return Err(format!("config key `{key}` is given twice; give it once"));
            }
        }
        Ok(Self {
            entries,
            known: Vec::new(),
        })
    }

    /// Takes the raw value of `key`, if given.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.known.push(key.to_string());
        self.entries.remove(key).map(|v| v.trim().to_string())
    }

    /// Takes `key` parsed as `T`, or `default` when it is not given.
    pub fn parse_or<T: FromStr>(&mut self, key: &str, default: T, what: &str) -> Result<T, String> {
        match self.take(key) {
            None => Ok(default),
            Some(raw) => parse_value(key, &raw, what),
        }
    }

    /// Takes `key` as a boolean (`true`/`false`), or `default`.
    pub fn bool_or(&mut self, key: &str, default: bool) -> Result<bool, String> {
        self.parse_or(key, default, "true or false")
    }

    /// Takes `key` as a comma-separated list; empty items are dropped.
    pub fn list(&mut self, key: &str) -> Vec<String> {
        self.take(key)
            .map(|raw| split_list(&raw))
            .unwrap_or_default()
    }

    /// Takes `key` as a comma-separated list of `name:value` pairs, values parsed as `T`.
    pub fn pairs<T: FromStr>(&mut self, key: &str, what: &str) -> Result<Vec<(String, T)>, String> {
        let Some(raw) = self.take(key) else {
            return Ok(Vec::new());
        };
        split_list(&raw)
            .into_iter()
            .map(|item| {
                let (name, value) = item.split_once(':').ok_or_else(|| {
                    format!("config key `{key}`: item `{item}` is not of the form NAME:VALUE")
                })?;
                Ok((
                    name.trim().to_string(),
                    parse_value(key, value.trim(), what)?,
                ))
            })
            .collect()
    }

    /// Takes every key that starts with `prefix`, as (rest of the key, value).
    pub fn prefixed(&mut self, prefix: &str) -> Vec<(String, String)> {
        self.known.push(format!("{prefix}*"));
        let keys: Vec<String> = self
            .entries
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| {
                let value = self.entries.remove(&k)?;
                Some((k[prefix.len()..].to_string(), value.trim().to_string()))
            })
            .collect()
    }

    /// Fails when a key was given that the rule did not take: a typo must not pass silently.
    pub fn finish(self) -> Result<(), String> {
        match self.entries.keys().next() {
            None => Ok(()),
            Some(key) => Err(format!(
                "unknown config key `{key}`; this rule knows: {}",
                self.known.join(", ")
            )),
        }
    }
}

fn parse_value<T: FromStr>(key: &str, raw: &str, what: &str) -> Result<T, String> {
    raw.parse()
        .map_err(|_| format!("config key `{key}`: expected {what}, got `{raw}`"))
}

fn split_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn typed_values_and_defaults() {
        let mut c = config(&[("max", " 12 "), ("flag", "true")]);
        assert_eq!(c.parse_or("max", 1u32, "a number"), Ok(12));
        assert_eq!(c.parse_or("missing", 7u32, "a number"), Ok(7));
        assert_eq!(c.bool_or("flag", false), Ok(true));
        assert!(c.finish().is_ok());
    }

    #[test]
    fn bad_value_names_key() {
        let mut c = config(&[("max", "lots")]);
        let err = c.parse_or("max", 1u32, "a whole number").unwrap_err();
        assert_eq!(err, "config key `max`: expected a whole number, got `lots`");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let mut c = config(&[("max", "1"), ("maxx", "2")]);
        let _ = c.take("max");
        let err = c.finish().unwrap_err();
        assert!(err.contains("`maxx`") && err.contains("max"), "{err}");
    }

    #[test]
    fn duplicate_key_is_an_error() {
        let pairs = vec![("a".to_string(), "1".to_string()), ("a".into(), "2".into())];
        assert!(Config::new(pairs).unwrap_err().contains("twice"));
    }

    #[test]
    fn pairs_and_lists() {
        let mut c = config(&[
            ("rates", "DE:1900, FR:2000"),
            ("list", "a, ,b"),
            ("x.EUR", "5"),
        ]);
        assert_eq!(
            c.pairs::<u32>("rates", "basis points"),
            Ok(vec![("DE".into(), 1900), ("FR".into(), 2000)])
        );
        assert_eq!(c.list("list"), vec!["a", "b"]);
        assert_eq!(c.prefixed("x."), vec![("EUR".to_string(), "5".to_string())]);
        let mut bad = config(&[("rates", "DE")]);
        assert!(
            bad.pairs::<u32>("rates", "n")
                .unwrap_err()
                .contains("NAME:VALUE")
        );
    }
}
