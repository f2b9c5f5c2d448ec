//! CPU time of the processes a bench run loads: the pipeline's (found by the port it
//! listens on, or given), the broker's and Redis's when their PIDs are given, and the load
//! generator's own. Each is read from `/proc/<pid>/stat` (user + system time of all its
//! threads) before and after the run, so a change is judged by CPU per order, which a
//! shared 2-core box measures far more steadily than orders per second.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

/// What a measured process is to the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A process of the pipeline (`order-pipeline run`, or one of its roles).
    Pipeline,
    /// A Kafka broker.
    Broker,
    /// A Redis server (or cluster node).
    Redis,
    /// This bench process.
    LoadGenerator,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Pipeline => "pipeline",
            Role::Broker => "broker",
            Role::Redis => "redis",
            Role::LoadGenerator => "load generator",
        }
    }
}

/// One process's CPU over a run.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    /// What it is.
    pub role: Role,
    /// Its PID.
    pub pid: i32,
    /// User-mode CPU seconds, all threads.
    pub user_seconds: f64,
    /// Kernel-mode CPU seconds, all threads.
    pub system_seconds: f64,
    /// CPU microseconds per readable order (absent when no order was readable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub us_per_order: Option<f64>,
}

/// The CPU of a run: each process, and per-order sums.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// Each measured process.
    pub processes: Vec<ProcessCpu>,
    /// CPU µs per readable order of the pipeline's processes (absent: none measured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline_us_per_order: Option<f64>,
    /// CPU µs per readable order of the pipeline, broker and Redis processes together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving_us_per_order: Option<f64>,
}

/// CPU clocks of the watched processes, from the start of a run.
pub struct CpuMeter {
    watched: Vec<(Role, i32, (u64, u64))>,
}

/// User and system ticks of `pid`, all its threads.
fn ticks(pid: i32) -> Result<(u64, u64), String> {
    let stat = procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .map_err(|e| format!("cannot read the CPU time of process {pid}: {e}"))?;
    Ok((stat.utime, stat.stime))
}

impl CpuMeter {
    /// Starts the clocks of `processes`, once each (a PID named twice counts once, under
    /// its first role); the load generator is always added. An error names a PID that is
    /// not a process this user can read.
    pub fn start(processes: &[(Role, i32)]) -> Result<Self, String> {
        let own = std::process::id() as i32;
        let mut watched: Vec<(Role, i32, (u64, u64))> = Vec::new();
        for &(role, pid) in processes {
            if pid <= 0 {
                return Err(format!("{pid} is not a process id"));
            }
            if watched.iter().all(|(_, seen, _)| *seen != pid) {
                watched.push((role, pid, ticks(pid)?));
            }
        }
        if watched.iter().all(|(_, seen, _)| *seen != own) {
            watched.push((Role::LoadGenerator, own, ticks(own)?));
        }
        Ok(Self { watched })
    }

    /// The CPU each process used since [`CpuMeter::start`], over `orders` readable
    /// orders. An error names a process that ended during the run.
    pub fn finish(self, orders: usize) -> Result<CpuReport, String> {
        let per_second = procfs::ticks_per_second() as f64;
        let per_order = |seconds: f64| (orders > 0).then(|| seconds * 1e6 / orders as f64);
        let mut processes = Vec::with_capacity(self.watched.len());
        for (role, pid, (user, system)) in self.watched {
            let (user_now, system_now) =
                ticks(pid).map_err(|e| format!("{e} (did it end during the run?)"))?;
            let user_seconds = user_now.saturating_sub(user) as f64 / per_second;
            let system_seconds = system_now.saturating_sub(system) as f64 / per_second;
            processes.push(ProcessCpu {
                role,
                pid,
                user_seconds,
                system_seconds,
                us_per_order: per_order(user_seconds + system_seconds),
            });
        }
        let sum = |roles: &[Role]| -> Option<f64> {
            let chosen: Vec<&ProcessCpu> = processes
                .iter()
                .filter(|p| roles.contains(&p.role))
                .collect();
            if chosen.is_empty() {
                return None;
            }
            per_order(
                chosen
                    .iter()
                    .map(|p| p.user_seconds + p.system_seconds)
                    .sum(),
            )
        };
        let pipeline_us_per_order = sum(&[Role::Pipeline]);
        // The sum with the servers only when a broker or Redis was measured too.
        let servers = processes
            .iter()
            .any(|p| matches!(p.role, Role::Broker | Role::Redis));
        let serving_us_per_order = pipeline_us_per_order
            .and(servers.then(|| sum(&[Role::Pipeline, Role::Broker, Role::Redis])))
            .flatten();
        Ok(CpuReport {
            processes,
            pipeline_us_per_order,
            serving_us_per_order,
        })
    }
}

impl CpuReport {
    /// Lines for people: each process's seconds and µs per order, then the sums.
    pub fn summary(&self) -> String {
        let mut text = String::new();
        for p in &self.processes {
            let seconds = p.user_seconds + p.system_seconds;
            let share = if seconds > 0.0 {
                p.system_seconds / seconds * 100.0
            } else {
                0.0
            };
            text.push_str(&format!(
                "cpu {:<15} pid {:<7} {:>7.2} s ({:.0}% kernel){}\n",
                p.role.name(),
                p.pid,
                seconds,
                share,
                p.us_per_order
                    .map(|us| format!(", {us:.0} µs/order"))
                    .unwrap_or_default()
            ));
        }
        if let Some(us) = self.pipeline_us_per_order {
            text.push_str(&format!("cpu per order: pipeline {us:.0} µs"));
            if let Some(all) = self.serving_us_per_order {
                text.push_str(&format!(", with broker and Redis {all:.0} µs"));
            }
            text.push('\n');
        }
        text
    }
}

/// The PID of the local process listening on `url`'s port, if `url` names this machine
/// (a loopback address or `localhost`) and this user may see the process's sockets.
pub fn listener_pid(url: &str) -> Option<i32> {
    let authority = url.split("://").nth(1).unwrap_or(url);
    let authority = authority.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::from([127, 0, 0, 1])
    } else {
        host.parse().ok()?
    };
    if !ip.is_loopback() {
        return None;
    }
    let listens = |addr: &SocketAddr| {
        // A JVM listens on IPv6 sockets: 127.0.0.1 shows as ::ffff:127.0.0.1.
        let ip = match addr.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        addr.port() == port && (ip.is_loopback() || ip.is_unspecified())
    };
    let mut sockets = procfs::net::tcp().unwrap_or_default();
    sockets.extend(procfs::net::tcp6().unwrap_or_default());
    let inodes: Vec<u64> = sockets
        .iter()
        .filter(|s| s.state == procfs::net::TcpState::Listen && listens(&s.local_address))
        .map(|s| s.inode)
        .collect();
    if inodes.is_empty() {
        return None;
    }
    procfs::process::all_processes()
        .ok()?
        .filter_map(Result::ok)
        .find(|process| {
            process.fd().is_ok_and(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    matches!(fd.target, procfs::process::FDTarget::Socket(inode) if inodes.contains(&inode))
                })
            })
        })
        .map(|process| process.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_of_a_loopback_port_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let own = std::process::id() as i32;
        assert_eq!(listener_pid(&format!("http://127.0.0.1:{port}")), Some(own));
        assert_eq!(
            listener_pid(&format!("http://localhost:{port}/")),
            Some(own)
        );
        drop(listener);
        assert_eq!(listener_pid(&format!("http://127.0.0.1:{port}")), None);
        assert_eq!(listener_pid("http://example.com:50051"), None);
        assert_eq!(listener_pid("not a url"), None);
    }

    #[test]
    fn cpu_is_counted_per_order_and_per_role() {
        let own = std::process::id() as i32;
        let meter = CpuMeter::start(&[(Role::Pipeline, own)]).unwrap();
        // Burn some CPU so that at least a tick passes.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let report = meter.finish(1000).unwrap();
        assert_eq!(report.processes.len(), 1, "the bench itself counts once");
        assert_eq!(report.processes[0].role, Role::Pipeline);
        let us = report.pipeline_us_per_order.unwrap();
        assert!(us > 0.0, "{report:?}");
        assert!(report.serving_us_per_order.is_none());
        assert!(report.summary().contains("cpu per order: pipeline"));

        let missing = CpuMeter::start(&[(Role::Broker, i32::MAX)]).err().unwrap();
        assert!(missing.contains(&i32::MAX.to_string()), "{missing}");
    }
}
