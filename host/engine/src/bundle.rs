//! Examples that travel with a plugin: `plugin bundle X.wasm --examples DIR` embeds the
//! example orders, their expectations and the config they were written for in a custom
//! section of the component ([`SECTION`], JSON). Custom sections do not change what the
//! component does; they do change its bytes, so a bundled plugin has a digest of its
//! own. The deploy gate runs a plugin's bundled examples on deploy, activate and
//! rollback ([`crate::bundle_check::check`]). This module is the byte format only: it
//! knows no plugin or chain.

use serde::{Deserialize, Serialize};
use wasmparser::{Parser, Payload};

/// The name of the custom section that holds a plugin's bundled examples.
pub const SECTION: &str = "order-pipeline-examples";

/// What a plugin carries: examples and the config they were written for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    /// The plugin's config while its examples run.
    pub config: Vec<(String, String)>,
    /// The examples, by name.
    pub examples: Vec<BundledExample>,
}

/// One bundled example: an order and the subset of its evaluation it must match (the
/// `plugin test` format), kept as the author wrote them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundledExample {
    /// Its name (the file stem it came from).
    pub name: String,
    /// The order.
    pub order: serde_json::Value,
    /// The expectation.
    pub expected: serde_json::Value,
}

/// Why a plugin's bundle could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The bytes do not parse as WebAssembly.
    #[error("not a WebAssembly component: {0}")]
    NotWasm(String),
    /// The section is there but does not hold a bundle.
    #[error("its `{SECTION}` section is not valid: {0}")]
    Invalid(String),
    /// A bundle section that is not the component's last section (another tool appended
    /// sections after it): it cannot be replaced without rewriting the component.
    #[error(
        "its `{SECTION}` section is not the last one; bundle the plugin as it was built instead"
    )]
    NotLast,
}

/// Where the component's top-level bundle section is: the whole section (id byte to
/// end) and its data.
struct Found {
    section: std::ops::Range<usize>,
    data: std::ops::Range<usize>,
}

fn find(bytes: &[u8]) -> Result<Option<Found>, BundleError> {
    let mut depth = 0usize;
    let mut found = None;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| BundleError::NotWasm(e.to_string()))? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::CustomSection(reader) if depth == 1 && reader.name() == SECTION => {
                // The reader's range is the name and the data; before it are the id byte
                // and the section's size (LEB128).
                let content = reader.range();
                let size = u32::try_from(content.len())
                    .map_err(|_| BundleError::Invalid("larger than 4 GiB".into()))?;
                let header = 1 + leb128_len(size);
                found = Some(Found {
                    section: content.start.saturating_sub(header)..content.end,
                    data: reader.data_offset()..content.end,
                });
            }
            _ => {}
        }
    }
    Ok(found)
}

fn leb128_len(mut value: u32) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

/// The bundle a component carries, if any.
pub fn read(bytes: &[u8]) -> Result<Option<Bundle>, BundleError> {
    let Some(found) = find(bytes)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes[found.data])
        .map(Some)
        .map_err(|e| BundleError::Invalid(e.to_string()))
}

/// The component with `bundle` in its bundle section (replacing one it had).
pub fn embed(bytes: &[u8], bundle: &Bundle) -> Result<Vec<u8>, BundleError> {
    let mut out = match find(bytes)? {
        Some(found) if found.section.end != bytes.len() => return Err(BundleError::NotLast),
        Some(found) => bytes[..found.section.start].to_vec(),
        None => bytes.to_vec(),
    };
    let data = serde_json::to_vec(bundle).map_err(|e| BundleError::Invalid(e.to_string()))?;
    let section = wasm_encoder::CustomSection {
        name: SECTION.into(),
        data: data.into(),
    };
    wasm_encoder::ComponentSection::append_to_component(&section, &mut out);
    Ok(out)
}
