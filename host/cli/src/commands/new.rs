//! `plugin new NAME --lang rust|js|python`: writes a ready rule project from the
//! templates in `examples/rule-template*`, embedded in the binary at build time, with
//! the WIT, a build command, examples and a README. Every template is the same rule
//! (`rule-small-order-fee`); the new project gets NAME in its place.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::ValueEnum;

use crate::exit::{EXIT_OK, Failure};

/// The languages a rule can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Lang {
    /// Rust, built with cargo (wit-bindgen).
    Rust,
    /// JavaScript, built with componentize-js (npm).
    Js,
    /// Python, built with componentize-py (PyPI).
    Python,
}

/// The name every template's rule has; the new project's name replaces it.
const TEMPLATE_NAME: &str = "rule-small-order-fee";

/// One file of a template: its path in the project and its text. Shell scripts
/// (`*.sh`) are written executable.
struct File {
    path: &'static str,
    text: &'static str,
}

macro_rules! files {
    ($dir:literal: $($path:literal),* $(,)?) => {
        &[$(File {
            path: $path,
            text: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"), "/../../examples/", $dir, "/", $path
            )),
        }),*]
    };
}

/// The examples every template shares (the same rule, the same expectations).
macro_rules! with_examples {
    ($dir:literal: $($rest:tt)*) => {
        files!($dir:
            "examples/config.toml",
            "examples/small-order.json",
            "examples/small-order.expected.json",
            "examples/large-order.json",
            "examples/large-order.expected.json",
            $($rest)*
        )
    };
}

const RUST: &[File] = with_examples!("rule-template":
    "README.md", ".gitignore", "Cargo.toml", "Cargo.lock", ".cargo/config.toml", "src/lib.rs",
);
const JS: &[File] = with_examples!("rule-template-js":
    "README.md", ".gitignore", "package.json", "package-lock.json", "src/decide.js",
    "src/rule.js", "test/decide.test.js",
);
const PYTHON: &[File] = with_examples!("rule-template-python":
    "README.md", ".gitignore", "requirements.txt", "pyproject.toml", "build.sh",
    "decide.py", "app.py", "tests/test_decide.py",
);

/// The contract, written to `wit/rule.wit` of every project.
const WIT: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../wit/rule.wit"));

impl Lang {
    fn files(self) -> &'static [File] {
        match self {
            Self::Rust => RUST,
            Self::Js => JS,
            Self::Python => PYTHON,
        }
    }

    /// The language's name for people.
    fn title(self) -> &'static str {
        match self {
            Self::Rust => "Rust",
            Self::Js => "JavaScript",
            Self::Python => "Python",
        }
    }

    /// What to run in the new project, for the message after it is written.
    fn next_steps(self, name: &str) -> String {
        let snake = name.replace('-', "_");
        match self {
            Self::Rust => format!(
                "  cargo build --release\n  order-pipeline plugin test --plugin target/wasm32-wasip2/release/{snake}.wasm --examples examples"
            ),
            Self::Js => format!(
                "  npm ci && npm test && npm run build\n  order-pipeline plugin test --plugin {name}.wasm --examples examples"
            ),
            Self::Python => format!(
                "  (with componentize-py and pytest from requirements.txt on PATH)\n  pytest && sh build.sh\n  order-pipeline plugin test --plugin {name}.wasm --examples examples"
            ),
        }
    }
}

/// Checks a rule name as `describe` must give it: kebab-case, a letter first, at most
/// 64 characters.
fn check_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a rule name: use kebab-case (lowercase letters, digits and single dashes, a letter first, at most 64 characters), e.g. rule-gift-wrap"
        ))
    }
}

/// The template's text for a project named `name`.
fn rename(text: &str, name: &str) -> String {
    text.replace(TEMPLATE_NAME, name)
        .replace(&TEMPLATE_NAME.replace('-', "_"), &name.replace('-', "_"))
}

/// Writes the project; refuses a directory that exists and is not empty.
pub(crate) fn new(
    name: &str,
    lang: Lang,
    dir: Option<PathBuf>,
    out: &mut dyn Write,
) -> Result<i32, Failure> {
    check_name(name)?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(format!(
            "{} exists and is not empty; give a new directory with --dir",
            dir.display()
        )
        .into());
    }
    let write = |path: &Path, text: &str| -> Result<(), Failure> {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&target, text)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        Ok(())
    };
    write(Path::new("wit/rule.wit"), WIT)?;
    for file in lang.files() {
        write(Path::new(file.path), &rename(file.text, name))?;
        if file.path.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            let target = dir.join(file.path);
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("cannot make {} executable: {e}", target.display()))?;
        }
    }
    writeln!(
        out,
        "wrote {} ({} rule `{name}`); next, in that directory:\n{}",
        dir.display(),
        lang.title(),
        lang.next_steps(name)
    )?;
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_kebab_case() {
        assert!(check_name("rule-gift-wrap").is_ok());
        for bad in ["Rule", "rule_x", "-rule", "rule-", "a--b", "9lives", ""] {
            assert!(check_name(bad).unwrap_err().contains("kebab-case"), "{bad}");
        }
    }

    #[test]
    fn every_template_names_its_rule_after_the_project() {
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            let all: String = lang
                .files()
                .iter()
                .map(|f| rename(f.text, "rule-gift-wrap"))
                .collect();
            assert!(!all.contains(TEMPLATE_NAME), "{lang:?}");
            assert!(!all.contains("rule_small_order_fee"), "{lang:?}");
            assert!(all.contains("rule-gift-wrap"), "{lang:?}");
        }
    }
}
