//! The soak: every fault of the fault tests on a schedule, on a three-node cluster, then
//! the embedded mode (docs/RELIABILITY.md; `scripts/soak.sh` runs it in full, CI short).

use super::*;

/// A number from the environment variable `name`, or `default`.
fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} `{v}` is not a number"))
        })
        .unwrap_or(default)
}

/// Prints one line per fault kind: the sums over its occurrences and the worst times.
fn summary(accounts: &[(String, Account)]) {
    let mut kinds: Vec<(String, Account)> = Vec::new();
    for (name, account) in accounts {
        let Some((kind, _)) = name.split_once(" #") else {
            continue; // a whole run, not a fault
        };
        let kind = kind.to_string();
        let index = match kinds.iter().position(|(k, _)| *k == kind) {
            Some(index) => index,
            None => {
                kinds.push((kind, Account::default()));
                kinds.len() - 1
            }
        };
        let total = &mut kinds[index].1;
        total.accepted += account.accepted;
        total.final_results += account.final_results;
        total.lost.extend(account.lost.iter().cloned());
        total.changed.extend(account.changed.iter().cloned());
        total.not_final.extend(account.not_final.iter().cloned());
        total.unavailable += account.unavailable;
        total.worst_decide = total.worst_decide.max(account.worst_decide);
        total.worst_submit_gap = total.worst_submit_gap.max(account.worst_submit_gap);
    }
    println!("per fault (all occurrences):");
    for (kind, account) in &kinds {
        println!("{}", account.line(kind));
    }
}

/// The soak: SOAK_ORDERS unary orders (default 12,000, CI's short run; scripts/soak.sh
/// sends 100,000) at SOAK_RATE per second (default 300) through the three roles on a
/// three-node cluster and Redis, while faults are injected in turn, each after
/// SOAK_STEADY orders (default 800) of steady running: a worker killed (a replacement
/// starts once the group has recovered), a second worker joining and leaving, the leader
/// of partition 0 killed (and restarted), a broker restarted with SIGTERM, and Redis
/// killed and restarted. Then a tenth of the orders go through `order-pipeline run`
/// (embedded), killed with -9 and restarted halfway. Prints the account of every fault
/// and per kind; asserts nothing is lost or changed anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Apache Kafka: scripts/test.sh runs it (short), scripts/soak.sh in full"]
async fn soak() {
    let _slot = fault_slot().await;
    let total = env_number("SOAK_ORDERS", 12_000);
    let rate = u32::try_from(env_number("SOAK_RATE", 300)).expect("SOAK_RATE fits in u32");
    let steady = env_number("SOAK_STEADY", 800);
    let embedded_share = total / 10;
    let dir = harness::run_dir();
    let mut kafka = Kafka::start(dir.path(), 3);
    let mut redis = Redis::start(dir.path());
    let env = RoleEnv::kafka(dir.path(), &kafka, &redis, 3);
    let topic = env.topic();
    let mut roles = Roles::start(env, 2);
    let cache_addr = roles.cache_addr.clone();
    let mut run = Run::start_at(
        &roles.order_addr,
        &cache_addr,
        "soak",
        total - embedded_share,
        rate,
    );
    let limit = Duration::from_secs(300);
    let mut occurrence = 0;
    while !run.load.all_sent() {
        run.load.wait_more(steady, limit).await;
        if run.load.all_sent() {
            break;
        }
        occurrence += 1;
        let from = now_unix_ms();
        let name = match occurrence % 5 {
            1 => {
                roles.workers[0].stop(Stop::Kill);
                run.load.wait_caught_up(&cache_addr, limit).await;
                roles.workers[0].start();
                "worker kill -9"
            }
            2 => {
                roles.add_worker();
                run.load.recovered(&cache_addr, steady / 2, limit).await;
                let mut extra = roles.workers.pop().unwrap();
                extra.stop(Stop::Term);
                "worker joins and leaves"
            }
            3 => {
                let leader = kafka.leader_of(&topic, 0);
                kafka.nodes[leader].stop(Stop::Kill);
                run.load.recovered(&cache_addr, steady / 2, limit).await;
                kafka.restart(leader);
                "leader kill -9"
            }
            4 => {
                let node = occurrence % 3;
                kafka.nodes[node].stop(Stop::Term);
                tokio::time::sleep(Duration::from_secs(2)).await;
                kafka.restart(node);
                "broker SIGTERM + restart"
            }
            _ => {
                redis.proc.stop(Stop::Kill);
                tokio::time::sleep(Duration::from_secs(2)).await;
                redis.restart();
                "redis kill -9 + restart"
            }
        };
        run.load.wait_caught_up(&cache_addr, limit).await;
        run.window(&format!("{name} #{occurrence}"), from);
        roles.assert_running();
    }
    let mut accounts = Vec::new();
    let names: Vec<String> = std::iter::once("soak, Kafka + Redis".to_string())
        .chain(run.windows.iter().map(|(name, _, _)| name.clone()))
        .collect();
    let kafka_accounts = run.settle("soak, Kafka + Redis", &cache_addr, true).await;
    accounts.extend(names.into_iter().zip(kafka_accounts));
    drop(roles);

    // The embedded mode: `order-pipeline run` killed with -9 halfway, restarted.
    let (mut all, order_addr, cache_addr) = start_run(dir.path());
    let mut run = Run::start_at(
        &order_addr,
        &cache_addr,
        "soak-embedded",
        embedded_share,
        rate,
    );
    run.load.wait_more(embedded_share / 2, limit).await;
    let from = now_unix_ms();
    all.stop(Stop::Kill);
    all.start();
    wait_port(&order_addr, Duration::from_secs(60), "order-pipeline run");
    run.load.wait_more(rate as usize, limit).await;
    run.load.wait_caught_up(&cache_addr, limit).await;
    run.window("run kill -9 + restart #1", from);
    all.assert_running();
    let embedded_accounts = run.settle("soak, embedded", &cache_addr, true).await;
    accounts.extend(
        ["soak, embedded", "run kill -9 + restart #1"]
            .map(String::from)
            .into_iter()
            .zip(embedded_accounts),
    );

    summary(&accounts);
    for (name, account) in &accounts {
        account.assert_nothing_lost(name);
    }
}
