//! TLS of the CLI's gRPC clients (`submit`, `get`, `health`, `bench`, `plugin`): `--tls`
//! with the system's roots, `--ca` for a private CA, and `--cert`/`--key` for servers
//! that require a client certificate (mTLS).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// How a client connects: plaintext, or TLS.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct TlsArgs {
    /// Connect with TLS, trusting the system's roots unless --ca is given (also implied by
    /// --ca, --cert or an https:// URL).
    #[arg(long)]
    pub tls: bool,
    /// PEM file of the CA that signed the server's certificate.
    #[arg(long, value_name = "CA.pem")]
    pub ca: Option<PathBuf>,
    /// PEM certificate to present to a server that requires one (mTLS); needs --key.
    #[arg(long, value_name = "CERT.pem", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "KEY.pem", requires = "cert")]
    pub key: Option<PathBuf>,
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: cannot read it: {e}", path.display()))
}

impl TlsArgs {
    fn enabled(&self, url: &str) -> bool {
        self.tls || self.ca.is_some() || self.cert.is_some() || url.starts_with("https://")
    }

    fn client_config(&self) -> Result<ClientTlsConfig, String> {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read("--ca", ca)?)),
            None => config.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            config = config.identity(Identity::from_pem(
                read("--cert", cert)?,
                read("--key", key)?,
            ));
        }
        Ok(config)
    }
}

/// The error and its causes on one line: tonic's transport errors say little on their own.
pub(crate) fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A channel to `url` (the `what` service), with TLS when `tls` asks for it.
pub(crate) async fn connect(url: &str, tls: &TlsArgs, what: &str) -> Result<Channel, String> {
    let secure = tls.enabled(url);
    let url = match url.strip_prefix("http://") {
        Some(rest) if secure => format!("https://{rest}"),
        _ => url.to_string(),
    };
    let mut endpoint = Channel::from_shared(url.clone())
        .map_err(|e| format!("bad URL {url}: {e}"))?
        .connect_timeout(Duration::from_secs(5));
    if secure {
        endpoint = endpoint
            .tls_config(tls.client_config()?)
            .map_err(|e| format!("TLS settings for {url}: {}", causes(&e)))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach the {what} at {url}: {}", causes(&e)))
}
