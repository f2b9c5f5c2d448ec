//! The live ruleset of a worker: the rule chain of the registry's active version, swapped
//! atomically when another version becomes active (told by the registry's notification,
//! and checked periodically in case one was missed). Every evaluation takes the chain
//! current when it starts and finishes on it; each result records that version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::registry::Registry;
use super::report::{Observation, Report, Reporter};
pub use super::rollout::ActiveChain;
use super::rollout::{Deciders, RolloutChains};
use super::trust::TrustStore;
use crate::domain::now_unix_ms;
use crate::domain::ruleset::{
    ActivateError, Expect, HistoryLimits, PluginSignature, RuleRef, RulesetBody, RulesetRecord,
};
use crate::readiness::Readiness;
use order_rules_engine::{Engine, Plugin, RuleChain, RuleSpec};

/// How often a worker checks the active version even without a notification.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The worker's current chain and what it needs to build the next one.
pub struct LiveRuleset {
    current: ArcSwap<ActiveChain>,
    engine: Engine,
    registry: Registry,
    plugins: Mutex<HashMap<String, Arc<Plugin>>>,
    swap: tokio::sync::Mutex<()>,
    last_error: Mutex<Option<String>>,
    history: HistoryLimits,
    rollout: ArcSwap<RolloutChains>,
    trust: Option<Arc<TrustStore>>,
    /// Where a refusal to switch is reported (the rules supervisor), and as whom.
    reporter: std::sync::OnceLock<(Reporter, String)>,
}

/// The ruleset a worker is configured with, stored as version 1 when the registry has
/// none: the chain, and each rule's signature (the ruleset file's `signature`).
pub struct Seed {
    /// The configured chain.
    pub chain: RuleChain,
    /// Each rule's signature, in the chain's order (`None`: unsigned).
    pub signatures: Vec<Option<PluginSignature>>,
    /// Whether this process may store it (it writes the registry); false: a worker
    /// that may not waits for the admin role to store the first version.
    pub store: bool,
}

impl Seed {
    /// A chain whose rules are unsigned.
    pub fn unsigned(chain: RuleChain) -> Self {
        Self {
            chain,
            signatures: Vec::new(),
            store: true,
        }
    }

    /// The rules as the registry stores them.
    fn rules(&self) -> Vec<RuleRef> {
        self.chain
            .specs()
            .enumerate()
            .map(|(i, spec)| RuleRef {
                signature: self.signatures.get(i).cloned().flatten(),
                ..rule_ref(spec)
            })
            .collect()
    }
}

/// Stores the configured ruleset (`seeded`, from `chain`) as the first version, unless
/// `trust` would refuse it or another worker seeded first (then theirs is active).
async fn store_seed(
    registry: &Registry,
    chain: &RuleChain,
    seeded: Vec<RuleRef>,
    trust: Option<&TrustStore>,
) -> anyhow::Result<RulesetRecord> {
    // Never store a ruleset the workers would refuse.
    if let Some(trust) = trust {
        for rule in &seeded {
            trust.check(rule).map_err(|e| {
                anyhow::anyhow!(
                    "the configured ruleset cannot be the first version: {e} (give \
                     each [[rule]] of RULESET a `signature` file)"
                )
            })?;
        }
    }
    for spec in chain.specs() {
        registry
            .put_plugin(spec.plugin.digest(), spec.plugin.bytes())
            .await?;
    }
    let body = RulesetBody {
        rules: seeded,
        reason: "initial ruleset (from the configuration)".into(),
        based_on: None,
        previous: Some(0),
        created_at_unix_ms: now_unix_ms(),
    };
    match registry.activate(&body, Expect::Nothing).await {
        Ok(version) => Ok(RulesetRecord { version, body }),
        // Another worker seeded it first: use theirs.
        Err(ActivateError::Conflict(_)) => registry
            .active()
            .await?
            .context("the registry lost its active ruleset"),
        Err(ActivateError::Store(e)) => Err(e),
    }
}

impl LiveRuleset {
    /// Starts from the registry's active version; with none, stores `seed` (the
    /// configured ruleset) as version 1. Changes keep the registry's history within
    /// `history`. With `trust`, every rule of every version is checked before it loads.
    pub async fn start(
        engine: Engine,
        registry: Registry,
        seed: Seed,
        history: HistoryLimits,
        trust: Option<Arc<TrustStore>>,
    ) -> anyhow::Result<Arc<Self>> {
        let seeded = seed.rules();
        let may_store = seed.store;
        let seed = seed.chain;
        let mut active = registry.active().await?;
        if active.is_none() && !may_store {
            active = Some(wait_for_first_version(&registry).await?);
        }
        let active = match active {
            Some(active) => {
                if seeded != active.body.rules {
                    tracing::info!(
                        version = active.version,
                        "the registry has an active ruleset: using it, not the configured one \
                         (change it with `plugin deploy`, `plugin activate`)"
                    );
                }
                active
            }
            None => store_seed(&registry, &seed, seeded, trust.as_deref()).await?,
        };
        let plugins = seed
            .specs()
            .map(|s| (s.plugin.digest().to_string(), Arc::clone(&s.plugin)))
            .collect();
        let live = Arc::new(Self {
            current: ArcSwap::from_pointee(ActiveChain {
                version: 0,
                chain: seed,
            }),
            engine,
            registry,
            plugins: Mutex::new(plugins),
            swap: tokio::sync::Mutex::new(()),
            last_error: Mutex::new(None),
            history,
            rollout: ArcSwap::from_pointee(RolloutChains::default()),
            trust,
            reporter: std::sync::OnceLock::new(),
        });
        live.switch_to(&active).await?;
        Ok(live)
    }

    /// Reports this worker's refusals to switch to `reporter`, as `worker` (once; later
    /// calls are ignored).
    pub fn report_to(&self, reporter: Reporter, worker: &str) {
        let _ = self.reporter.set((reporter, worker.to_string()));
    }

    /// The trust file every rule is checked against, when one is configured.
    pub fn trust(&self) -> Option<&TrustStore> {
        self.trust.as_deref()
    }

    /// The chain to evaluate the next order with.
    pub fn current(&self) -> Arc<ActiveChain> {
        self.current.load_full()
    }

    /// The engine plugins are loaded into.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// How much history the registry keeps.
    pub fn history_limits(&self) -> &HistoryLimits {
        &self.history
    }

    /// The rollout this worker runs beside the live version (shadow, canary).
    pub fn rollout(&self) -> Arc<RolloutChains> {
        self.rollout.load_full()
    }

    /// Who decides orders now: the live chain and the canary's candidate.
    pub fn deciders(&self) -> Deciders {
        Deciders {
            live: self.current(),
            canary: self.rollout().canary.clone(),
        }
    }

    /// Follows the registry's rollout: builds the candidates' chains when it changed. A
    /// candidate that does not build here leaves this worker without that part of the
    /// rollout (logged), and the live version deciding alone.
    pub async fn refresh_rollout(&self) -> anyhow::Result<()> {
        let rollout = self.registry.rollout().await?.unwrap_or_default();
        if rollout == self.rollout().rollout {
            return Ok(());
        }
        let mut chains = RolloutChains {
            rollout: rollout.clone(),
            ..RolloutChains::default()
        };
        if let Some(shadow) = rollout.shadow {
            match self.chain_of(shadow.version).await {
                Ok(chain) => chains.shadow = Some((shadow, chain)),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), version = shadow.version, "cannot build the shadow candidate; no shadow run here")
                }
            }
        }
        if let Some(canary) = rollout.canary {
            match self.chain_of(canary.version).await {
                Ok(chain) => chains.canary = Some((canary, chain)),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), version = canary.version, "cannot build the canary candidate; the live version decides every order here")
                }
            }
        }
        tracing::info!(
            shadow = ?chains.shadow.as_ref().map(|(s, _)| s.version),
            canary = ?chains.canary.as_ref().map(|(c, _)| (c.version, c.basis_points)),
            "rollout changed"
        );
        self.rollout.store(Arc::new(chains));
        Ok(())
    }

    /// The chain of `version` (built here; its plugins are compiled once per process).
    pub async fn chain_of(&self, version: u64) -> anyhow::Result<Arc<ActiveChain>> {
        let record = self
            .registry
            .get(version)
            .await?
            .with_context(|| format!("ruleset version {version} is missing"))?;
        let chain = self.build(&record.body.rules).await?;
        Ok(Arc::new(ActiveChain { version, chain }))
    }

    /// Switches to the registry's active version if it is not the current one, and
    /// follows the rollout; returns whether it switched.
    pub async fn refresh(&self) -> anyhow::Result<bool> {
        if let Err(e) = self.refresh_rollout().await {
            tracing::warn!(error = %format!("{e:#}"), "cannot read the rollout; keeping the current one");
        }
        let Some(active) = self.registry.active_version().await? else {
            return Ok(false);
        };
        if active == self.current().version {
            return Ok(false);
        }
        let record = self
            .registry
            .get(active)
            .await?
            .with_context(|| format!("active ruleset version {active} is missing"))?;
        self.switch_to(&record).await
    }

    /// Builds `record`'s chain and swaps it in (unless it is current already).
    async fn switch_to(&self, record: &RulesetRecord) -> anyhow::Result<bool> {
        let _one_at_a_time = self.swap.lock().await;
        if self.current().version == record.version {
            return Ok(false);
        }
        let chain = self.build(&record.body.rules).await?;
        let previous = self.current().version;
        self.current.store(Arc::new(ActiveChain {
            version: record.version,
            chain,
        }));
        tracing::info!(
            from = previous,
            to = record.version,
            reason = %record.body.reason,
            rules = %record.body.rules.iter().map(|r| format!("{}@{}", r.name, &r.digest[..12.min(r.digest.len())])).collect::<Vec<_>>().join(","),
            "ruleset switched"
        );
        metrics::counter!(crate::metrics::RULESET_SWITCHES).increment(1);
        metrics::gauge!(crate::metrics::RULESET_VERSION).set(record.version as f64);
        Ok(true)
    }

    /// Builds a chain of stored plugins, compiling each digest once per process. With a
    /// trust file, each rule's signature is checked first, every time (a plugin compiled
    /// already included): one untrusted rule refuses the whole chain.
    pub async fn build(&self, rules: &[RuleRef]) -> anyhow::Result<RuleChain> {
        let mut specs = Vec::with_capacity(rules.len());
        for rule in rules {
            if let Some(trust) = &self.trust
                && let Err(e) = trust.check(rule)
            {
                tracing::error!(rule = %rule.name, digest = %rule.digest, reason = e.reason(), error = %e, "an untrusted rule is refused");
                return Err(e.into());
            }
            let cached = self
                .plugins
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&rule.digest)
                .cloned();
            let plugin = match cached {
                Some(plugin) => plugin,
                None => {
                    let bytes = self.registry.plugin(&rule.digest).await?.with_context(|| {
                        format!(
                            "plugin {} ({}) is not in the registry",
                            rule.name, rule.digest
                        )
                    })?;
                    verify_blob(rule, &bytes)?;
                    let engine = self.engine.clone();
                    let plugin = tokio::task::spawn_blocking(move || engine.load(&bytes))
                        .await
                        .context("loading a plugin panicked")?
                        .with_context(|| format!("loading plugin {}", rule.name))?;
                    self.plugins
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(rule.digest.clone(), Arc::clone(&plugin));
                    plugin
                }
            };
            specs.push(RuleSpec {
                plugin,
                config: rule.config.clone(),
                isolation: rule.isolation,
                limits: rule.limits,
            });
        }
        tokio::task::spawn_blocking(move || RuleChain::new(specs))
            .await
            .context("building a chain panicked")?
            .map_err(anyhow::Error::from)
    }

    /// Why the last attempt to switch to the registry's active version failed, if it did
    /// (cleared by the next success).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Follows the registry until `shutdown`: on every notification, and every
    /// [`RECHECK_INTERVAL`]. While it cannot switch to the active version, `readiness`
    /// has a `ruleset` problem.
    pub async fn follow(
        self: Arc<Self>,
        readiness: Arc<Readiness>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut changes = self.registry.changes().await;
        let mut recheck = tokio::time::interval(RECHECK_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = changes.changed() => {}
                _ = recheck.tick() => {}
            }
            let problem = match self.refresh().await {
                Ok(_) => None,
                Err(e) => {
                    let why = format!(
                        "cannot switch to the active ruleset (still on version {}): {e:#}",
                        self.current().version
                    );
                    if self.last_error().as_ref() != Some(&why) {
                        tracing::warn!(error = %format!("{e:#}"), "cannot switch to the active ruleset; keeping the current one");
                        // Once per new reason (a refused blob among them), in the trail
                        // (written by the rules supervisor).
                        if let Some((reporter, worker)) = self.reporter.get() {
                            let report = Report {
                                worker: worker.clone(),
                                observation: Observation::Refused {
                                    kept_version: self.current().version,
                                    reason: format!("{e:#}"),
                                },
                            };
                            reporter.report(report, || true).await;
                        }
                    }
                    Some(why)
                }
            };
            let problem = match problem {
                Some(problem) => Some(problem),
                None => self.untrusted_current().await,
            };
            *self
                .last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = problem.clone();
            readiness.set("ruleset", problem);
        }
    }
}

impl LiveRuleset {
    /// Why the version this worker runs is no longer trusted (a key or digest revoked, a
    /// signature expired since it loaded), if it is not. The worker keeps deciding with
    /// it (it has nothing trusted to switch to, and stopping would stall every order)
    /// and reports it as not ready until a trusted version is active; a worker that
    /// starts refuses it.
    async fn untrusted_current(&self) -> Option<String> {
        let trust = self.trust.as_ref()?;
        let version = self.current().version;
        let record = self.registry.get(version).await.ok()??;
        let why = match trust.current() {
            Err(e) => e,
            Ok(trust) => {
                let now = now_unix_ms() / 1000;
                record
                    .body
                    .rules
                    .iter()
                    .find_map(|r| trust.check(r, now).err())?
                    .to_string()
            }
        };
        Some(format!(
            "the running ruleset version {version} is no longer trusted; activate a trusted \
             version: {why}"
        ))
    }
}

/// How long a worker that may not write the registry waits for its first version.
const FIRST_VERSION_WAIT: Duration = Duration::from_secs(120);

/// Waits for the admin role to store the first ruleset version.
async fn wait_for_first_version(registry: &Registry) -> anyhow::Result<RulesetRecord> {
    tracing::info!("the registry has no ruleset yet; waiting for the admin role to store one");
    let deadline = tokio::time::Instant::now() + FIRST_VERSION_WAIT;
    loop {
        if let Some(active) = registry.active().await? {
            return Ok(active);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the registry has no ruleset after {}s, and this worker may not store one \
                 (WORKER_ADMIN=false): start the admin role (`order-pipeline admin`) first",
                FIRST_VERSION_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A chain step as a registry entry.
pub fn rule_ref(spec: &RuleSpec) -> RuleRef {
    RuleRef {
        name: spec.plugin.name().to_string(),
        version: spec.plugin.info().version.clone(),
        digest: spec.plugin.digest().to_string(),
        config: spec.config.clone(),
        isolation: spec.isolation,
        limits: spec.limits,
        signature: None,
    }
}

/// Checks that a plugin blob read from the registry is the one `rule` names: its sha256
/// must be the digest the ruleset version records, before the blob is compiled or its
/// compiled form taken from the cache. A blob changed in the registry (substituted or
/// corrupted) refuses the whole version: the caller keeps the last verified one.
fn verify_blob(rule: &RuleRef, bytes: &[u8]) -> anyhow::Result<()> {
    let actual = order_rules_engine::digest(bytes);
    if actual == rule.digest {
        return Ok(());
    }
    metrics::counter!(crate::metrics::PLUGIN_BLOBS_REFUSED, "reason" => "digest-mismatch")
        .increment(1);
    tracing::error!(
        rule = %rule.name,
        expected = %rule.digest,
        actual = %actual,
        "a plugin blob in the registry does not match its digest; refusing the version"
    );
    anyhow::bail!(
        "plugin {} ({}): the registry's blob has sha256 {actual}, not the digest the \
         version names: refused (substituted or corrupted)",
        rule.name,
        rule.digest
    )
}
