//! Builds the rule plugins (the `plugins/` cargo workspace) and embeds the `rule-*`
//! components in this crate, so that `order-pipeline run` and the default ruleset work
//! from any directory. Nothing prebuilt is committed:
//! this is the one place plugins get built for the host.
//!
//! The plugins are built for wasm32-unknown-unknown and turned into components here
//! (wit-component): they import nothing but the `rule` world's `log`, which makes a fresh
//! instance cheaper than a wasm32-wasip2 build (one core instance instead of the WASI
//! adapter's four, no WASI context to wire). Built by hand (`cd plugins && cargo build
//! --release`) they are wasm32-wasip2 components, which the host runs just as well.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-unknown-unknown";

fn main() {
    if let Err(message) = run() {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .ok_or("host/builtin-rules has no grandparent directory")?
        .to_path_buf();
    let plugins = root.join("plugins");
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);

    watch(&root, &plugins)?;

    // Share one plugin target dir between profiles: OUT_DIR is
    // <target>[/<triple>]/<profile>/build/<pkg>-<hash>/out.
    let target_dir = match env::var_os("ORDER_PIPELINE_PLUGIN_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => out_dir
            .ancestors()
            .nth(4)
            .ok_or("unexpected OUT_DIR layout")?
            .join("wasm-plugins"),
    };

    let wasm_dir = build_components(&plugins, &target_dir)?;
    write_builtins(&plugins, &wasm_dir, &out_dir)
}

/// Tells cargo to run this script again when a plugin's sources, the plugin workspace,
/// the WIT or the plugin target dir change (not the whole directory: plugins/target may
/// be in it).
fn watch(root: &Path, plugins: &Path) -> Result<(), String> {
    for file in ["Cargo.toml", "Cargo.lock", ".cargo"] {
        println!("cargo:rerun-if-changed={}", plugins.join(file).display());
    }
    for dir in crate_dirs(plugins)? {
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-env-changed=ORDER_PIPELINE_PLUGIN_TARGET_DIR");
    Ok(())
}

/// Builds the plugin workspace for wasm and makes a component of each module; answers
/// the directory of the components.
fn build_components(plugins: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    // The rule crates the host also links natively are `cdylib` + `rlib`, and cargo runs
    // no LTO for a crate with both (measured: components 11 KB bigger and a fresh
    // instance slower). So the workspace is built without them, and each of them alone
    // as a cdylib, with the profile's LTO.
    let both = rlib_rule_crates(plugins)?;
    let mut workspace = vec!["build", "--release", "--workspace", "--target", WASM_TARGET];
    for name in &both {
        workspace.extend(["--exclude", name.as_str()]);
    }
    cargo_in(plugins, target_dir, &workspace)?;
    for name in &both {
        cargo_in(
            plugins,
            target_dir,
            &[
                "rustc",
                "--release",
                "-p",
                name,
                "--target",
                WASM_TARGET,
                "--crate-type",
                "cdylib",
            ],
        )?;
    }
    let core_dir = target_dir.join(WASM_TARGET).join("release");
    let wasm_dir = target_dir.join("components");
    fs::create_dir_all(&wasm_dir).map_err(|e| format!("{}: {e}", wasm_dir.display()))?;
    for entry in fs::read_dir(&core_dir).map_err(|e| format!("{}: {e}", core_dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            componentize(
                &path,
                &wasm_dir.join(path.file_name().ok_or("no file name")?),
            )?;
        }
    }
    Ok(wasm_dir)
}

/// Writes `builtin_plugins.rs`: every rule component as a constant, and where the build
/// put them.
fn write_builtins(plugins: &Path, wasm_dir: &Path, out_dir: &Path) -> Result<(), String> {
    let mut builtins = String::from(
        "/// Rule plugins compiled from `plugins/rule-*` and embedded at build time.\n\
         pub static BUILTIN_PLUGINS: &[(&str, &[u8])] = &[\n",
    );
    for name in rule_crates(plugins)? {
        let wasm = wasm_dir.join(format!("{}.wasm", name.replace('-', "_")));
        if !wasm.is_file() {
            return Err(format!(
                "the plugin build did not produce {}",
                wasm.display()
            ));
        }
        builtins.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            wasm.display().to_string()
        ));
    }
    builtins.push_str("];\n\n");
    builtins.push_str(&format!(
        "/// Where this build put every plugin of `plugins/` (fixtures too), for tests and tools.\n\
         pub const PLUGIN_BUILD_DIR: &str = {:?};\n",
        wasm_dir.display().to_string()
    ));
    fs::write(out_dir.join("builtin_plugins.rs"), builtins).map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs cargo with `args` in the plugin workspace, into `target_dir`.
fn cargo_in(plugins: &Path, target_dir: &Path, args: &[&str]) -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(plugins)
        .args(args)
        .arg("--target-dir")
        .arg(target_dir);
    // Flags meant for the host build must not leak into the wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
        "CLIPPY_ARGS",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("could not run cargo to build the plugins: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building the plugins failed ({status}); run `cargo build --release` in {} to see why \
             (is the {WASM_TARGET} target installed? `rustup target add {WASM_TARGET}`)",
            plugins.display()
        ));
    }
    Ok(())
}

/// Turns the core module at `module` (with the component-type section wit-bindgen embeds)
/// into a component at `out`.
fn componentize(module: &Path, out: &Path) -> Result<(), String> {
    let bytes = fs::read(module).map_err(|e| format!("{}: {e}", module.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&bytes)
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|e| format!("making a component of {}: {e:#}", module.display()))?;
    // Rewrite only on change, so that include_bytes! users are not rebuilt for nothing.
    if fs::read(out).ok().as_deref() != Some(component.as_slice()) {
        fs::write(out, component).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

/// Every crate directory of the plugin workspace: `plugins/*` and `plugins/fixtures/*`.
fn crate_dirs(plugins: &Path) -> Result<Vec<PathBuf>, String> {
    let mut dirs = Vec::new();
    for parent in [plugins.to_path_buf(), plugins.join("fixtures")] {
        for entry in fs::read_dir(&parent).map_err(|e| format!("{}: {e}", parent.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.join("Cargo.toml").is_file() {
                dirs.push(path);
            }
        }
    }
    Ok(dirs)
}

/// The `rule-*` crates that are also an `rlib` (linked natively by `native-baseline`).
fn rlib_rule_crates(plugins: &Path) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for name in rule_crates(plugins)? {
        let text = fs::read_to_string(plugins.join(&name).join("Cargo.toml"))
            .map_err(|e| e.to_string())?;
        if text.contains("\"rlib\"") {
            names.push(name);
        }
    }
    Ok(names)
}

/// The `rule-*` crates of the plugin workspace that build a component (not the shared lib).
fn rule_crates(plugins: &Path) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for entry in fs::read_dir(plugins).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let manifest = entry.path().join("Cargo.toml");
        if name.starts_with("rule-") && manifest.is_file() {
            let text = fs::read_to_string(&manifest).map_err(|e| e.to_string())?;
            if text.contains("cdylib") {
                names.push(name);
            }
        }
    }
    names.sort();
    Ok(names)
}
