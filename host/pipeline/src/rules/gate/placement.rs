//! Where a deployed rule goes in the active chain.

use super::GateError;
use crate::domain::ruleset::RuleRef;

/// Where a deployed rule goes in the active chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Before the rule of this name.
    Before(String),
    /// After the rule of this name.
    After(String),
    /// In place of the rule of this name.
    Replace(String),
    /// In place of the rule of the same name, or at the end.
    SameNameOrEnd,
}

/// Puts `entry` (the rule `name`) into `rules` as `placement` says.
pub fn place(
    rules: &mut Vec<RuleRef>,
    entry: RuleRef,
    placement: &Placement,
) -> Result<(), GateError> {
    let name = entry.name.clone();
    let position_of = |rules: &[RuleRef], target: &str| {
        rules
            .iter()
            .position(|r| r.name == target)
            .ok_or_else(|| GateError::Refused(format!("the active ruleset has no rule `{target}`")))
    };
    match placement {
        Placement::Before(target) => {
            let at = position_of(rules, target)?;
            rules.retain(|r| r.name != name);
            let at = rules
                .iter()
                .position(|r| &r.name == target)
                .unwrap_or(at.min(rules.len()));
            rules.insert(at, entry);
        }
        Placement::After(target) => {
            position_of(rules, target)?;
            rules.retain(|r| r.name != name);
            let at = rules
                .iter()
                .position(|r| &r.name == target)
                .map_or(rules.len(), |i| i + 1);
            rules.insert(at, entry);
        }
        Placement::Replace(target) => {
            let at = position_of(rules, target)?;
            rules[at] = entry;
        }
        Placement::SameNameOrEnd => match rules.iter().position(|r| r.name == name) {
            Some(at) => rules[at] = entry,
            None => rules.push(entry),
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use order_rules_engine::Isolation;

    fn rule(name: &str) -> RuleRef {
        RuleRef {
            name: name.into(),
            version: "1".into(),
            digest: format!("{name}-digest"),
            config: Vec::new(),
            isolation: Isolation::Fresh,
            limits: Default::default(),
            signature: None,
        }
    }

    fn names(rules: &[RuleRef]) -> Vec<&str> {
        rules.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn placement_before_after_replace_and_by_name() {
        let base = vec![rule("a"), rule("b"), rule("c")];
        let mut rules = base.clone();
        place(&mut rules, rule("x"), &Placement::Before("b".into())).unwrap();
        assert_eq!(names(&rules), ["a", "x", "b", "c"]);
        // Moving an existing rule after another one keeps one copy of it.
        place(&mut rules, rule("a"), &Placement::After("c".into())).unwrap();
        assert_eq!(names(&rules), ["x", "b", "c", "a"]);
        place(&mut rules, rule("y"), &Placement::Replace("b".into())).unwrap();
        assert_eq!(names(&rules), ["x", "y", "c", "a"]);
        place(&mut rules, rule("z"), &Placement::SameNameOrEnd).unwrap();
        assert_eq!(names(&rules), ["x", "y", "c", "a", "z"]);
        let mut newer = rule("c");
        newer.version = "2".into();
        place(&mut rules, newer, &Placement::SameNameOrEnd).unwrap();
        assert_eq!(rules[2].version, "2");
        let err = place(&mut rules, rule("q"), &Placement::After("nope".into())).unwrap_err();
        assert!(err.to_string().contains("`nope`"), "{err}");
    }
}
