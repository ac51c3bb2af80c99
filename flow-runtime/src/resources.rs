//! The resource pool: what states may hold at once, granted all-or-nothing by the coordinator.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use flow_core::ResourceRequirements;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use crate::scheduler::Message;

/// The kinds of resource a pool holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// CPU cores.
    Cpu,
    /// Memory, in MiB.
    Memory,
    /// I/O weight.
    Io,
    /// Network weight.
    Network,
    /// GPU units.
    Gpu,
}

/// Every kind, in the order of `Amounts`.
pub(crate) const KINDS: [ResourceKind; 5] = [
    ResourceKind::Cpu,
    ResourceKind::Memory,
    ResourceKind::Io,
    ResourceKind::Network,
    ResourceKind::Gpu,
];

/// Amounts in thousandths (memory in whole MiB), so that grants and releases add up exactly.
pub(crate) type Amounts = [u64; 5];

/// Converts requirements to exact amounts.
pub(crate) fn amounts(r: &ResourceRequirements) -> Amounts {
    let milli = |v: f64| {
        if v.is_nan() || v <= 0.0 {
            0
        } else {
            // An infinite amount saturates: "unlimited" for a capacity.
            (v * 1000.0).round() as u64
        }
    };
    [
        milli(r.cpu),
        r.memory_mb,
        milli(r.io),
        milli(r.network),
        milli(r.gpu),
    ]
}

fn value(kind: usize, amount: u64) -> f64 {
    if kind == 1 {
        amount as f64
    } else {
        amount as f64 / 1000.0
    }
}

/// Use of one kind of resource.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UsageStats {
    /// Which kind.
    pub kind: ResourceKind,
    /// The pool's total.
    pub capacity: f64,
    /// Held now.
    pub in_use: f64,
    /// The most held at once.
    pub peak: f64,
    /// Grants that included this kind.
    pub grants: u64,
    /// Times a state needing this kind had to wait for it.
    pub waits: u64,
    /// The share of the capacity held on average, from the pool's first grant to now (0 to
    /// 1; time on tokio's clock).
    pub utilisation: f64,
}

/// What one running state holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    /// The workflow.
    pub agent: Arc<str>,
    /// The run.
    pub run_id: u64,
    /// The state.
    pub state: Arc<str>,
    /// What it holds.
    pub amounts: ResourceRequirements,
}

/// A state waiting for the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    /// The workflow.
    pub agent: Arc<str>,
    /// The run.
    pub run_id: u64,
    /// The state.
    pub state: Arc<str>,
    /// What it needs.
    pub needs: ResourceRequirements,
    /// How long it has waited so far.
    pub waited: Duration,
}

/// A pool of CPU, memory, I/O, network and GPU capacity that states draw from: a state starts
/// only when the pool can grant everything it needs at once, and gives it back when its attempt
/// ends, however it ends. One pool may be shared by several agents and runs (clone it).
///
/// Grants are made by each run's coordinator (never by state tasks); when a grant is given
/// back, the runs waiting for the pool are told to try again.
#[derive(Debug, Clone)]
pub struct ResourcePool {
    shared: Arc<PoolShared>,
}

#[derive(Debug)]
struct PoolShared {
    capacity: Amounts,
    preemption: bool,
    ledger: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    in_use: Amounts,
    peak: Amounts,
    grants: [u64; 5],
    waits: [u64; 5],
    next_grant: u64,
    allocations: Vec<(u64, Allocation)>,
    waiting: Vec<(Waiting, Instant, u64)>,
    /// Runs to tell when something is given back, at most once each: the run's key, its
    /// coordinator, and the index of this pool among the run's admission gates.
    waiters: Vec<(u64, UnboundedSender<Message>, usize)>,
    /// Held × time (thousandths of a unit × seconds) up to `changed`, per kind: the pool's
    /// utilisation over time.
    busy: [f64; 5],
    /// When `in_use` last changed, and when the first grant was made.
    changed: Option<Instant>,
    since: Option<Instant>,
    /// Caps on what all runs of one agent may hold at once, by agent name.
    agent_quotas: Vec<(Arc<str>, Amounts)>,
    /// Caps on what all runs of one state may hold at once, by (agent, state).
    state_quotas: Vec<(Arc<str>, Arc<str>, Amounts)>,
}

/// Who asks for a grant.
#[derive(Clone)]
pub(crate) struct Claimant {
    /// Unique per run in this process (run ids are unique per agent only).
    pub(crate) run_key: u64,
    pub(crate) agent: Arc<str>,
    pub(crate) run_id: u64,
    pub(crate) state: Arc<str>,
}

/// Resources held by one attempt; given back when dropped.
#[derive(Debug)]
pub(crate) struct Grant {
    pool: ResourcePool,
    id: u64,
    amounts: Amounts,
}

impl ResourcePool {
    /// A pool with these totals.
    pub fn new(total: ResourceRequirements) -> Self {
        Self {
            shared: Arc::new(PoolShared {
                capacity: amounts(&total),
                preemption: false,
                ledger: Mutex::default(),
            }),
        }
    }

    /// A pool the size of this machine: CPUs as the process may use them (container limits
    /// count), total memory (read from `/proc/meminfo` on Linux, 0 elsewhere), I/O and network
    /// 100 units each, and GPUs: with the `nvidia` feature, the NVIDIA GPUs `nvidia-smi` lists
    /// (0, without error, when there is no driver); without it, none (give them with
    /// [`ResourcePool::with_gpus`]). Detection reads files and may start `nvidia-smi`: call it
    /// once, at start-up, not from async code that must not block.
    pub fn detect() -> Self {
        let cpu = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        Self::new(ResourceRequirements {
            cpu,
            memory_mb: total_memory_mb().unwrap_or(0),
            io: 100.0,
            network: 100.0,
            gpu: detect_gpus(),
        })
    }

    /// This pool's totals, with preemption: a ready state that cannot be granted may stop
    /// running states of its own run that are marked preemptible and have a lower priority,
    /// if that frees enough; they go back to the ready queue and run again later from the
    /// start (at-least-once). States of other runs sharing the pool are never preempted.
    /// (This makes a new pool: clones taken before share the old one; quotas are kept.)
    pub fn with_preemption(self) -> Self {
        let ledger = self.ledger();
        let kept = Ledger {
            agent_quotas: ledger.agent_quotas.clone(),
            state_quotas: ledger.state_quotas.clone(),
            ..Ledger::default()
        };
        drop(ledger);
        Self {
            shared: Arc::new(PoolShared {
                capacity: self.shared.capacity,
                preemption: true,
                ledger: Mutex::new(kept),
            }),
        }
    }

    /// Whether `other` is this very pool (a clone of it).
    pub(crate) fn same(&self, other: &ResourcePool) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Whether this pool preempts (see [`ResourcePool::with_preemption`]).
    pub fn preemption(&self) -> bool {
        self.shared.preemption
    }

    /// The kinds `needs` does not fit in now (capacity only).
    pub(crate) fn short_of(&self, needs: &Amounts) -> [bool; 5] {
        let ledger = self.ledger();
        std::array::from_fn(|k| ledger.in_use[k].saturating_add(needs[k]) > self.shared.capacity[k])
    }

    /// Why a state needing `needs` waits, for `blocked()`: the kinds it is short of now, or,
    /// when it would fit, that it waits behind a state of its run the pool cannot grant.
    pub(crate) fn wait_reason(&self, needs: &Amounts) -> String {
        let kinds: Vec<String> = KINDS
            .iter()
            .zip(self.short_of(needs))
            .filter(|(_, short)| *short)
            .map(|(kind, _)| format!("{kind:?}").to_lowercase())
            .collect();
        if kinds.is_empty() {
            "behind a larger request of its run".to_owned()
        } else {
            format!("short of {}", kinds.join(", "))
        }
    }

    /// Forgets that `state` of a run waits (it was cancelled or gave up).
    pub(crate) fn forget_wait(&self, run_key: u64, state: &str) {
        self.ledger()
            .waiting
            .retain(|(w, _, run)| !(*run == run_key && &*w.state == state));
    }

    /// Whether `needs` would fit if `freed` were given back first.
    pub(crate) fn would_fit(&self, needs: &Amounts, freed: &Amounts) -> bool {
        let ledger = self.ledger();
        (0..5).all(|k| {
            ledger.in_use[k]
                .saturating_sub(freed[k])
                .saturating_add(needs[k])
                <= self.shared.capacity[k]
        })
    }

    /// This pool's totals with `gpus` GPU units (a new pool, like
    /// [`ResourcePool::with_preemption`]; call it before setting quotas).
    pub fn with_gpus(self, gpus: f64) -> Self {
        let mut total = self.capacity();
        total.gpu = gpus;
        let pool = Self::new(total);
        if self.preemption() {
            pool.with_preemption()
        } else {
            pool
        }
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.shared
            .ledger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The pool's totals.
    pub fn capacity(&self) -> ResourceRequirements {
        let c = &self.shared.capacity;
        ResourceRequirements {
            cpu: value(0, c[0]),
            memory_mb: c[1],
            io: value(2, c[2]),
            network: value(3, c[3]),
            gpu: value(4, c[4]),
        }
    }

    /// Use per kind.
    pub fn usage_stats(&self) -> Vec<UsageStats> {
        let ledger = self.ledger();
        let utilisation = ledger.utilisation(&self.shared.capacity, Instant::now());
        KINDS
            .iter()
            .enumerate()
            .map(|(k, &kind)| UsageStats {
                kind,
                capacity: value(k, self.shared.capacity[k]),
                in_use: value(k, ledger.in_use[k]),
                peak: value(k, ledger.peak[k]),
                grants: ledger.grants[k],
                waits: ledger.waits[k],
                utilisation: utilisation[k],
            })
            .collect()
    }

    /// What each running state holds.
    pub fn allocations(&self) -> Vec<Allocation> {
        self.ledger()
            .allocations
            .iter()
            .map(|(_, a)| a.clone())
            .collect()
    }

    /// The states waiting for the pool, and for how long.
    pub fn waiting(&self) -> Vec<Waiting> {
        let now = Instant::now();
        self.ledger()
            .waiting
            .iter()
            .map(|(w, since, _)| Waiting {
                waited: now - *since,
                ..w.clone()
            })
            .collect()
    }

    /// Caps what all runs of agent `agent` may hold at once (0 for a kind: no cap on it).
    /// Set quotas before the runs they govern start: a run checks its requests against them
    /// when it starts.
    pub fn limit_agent(&self, agent: &str, limits: ResourceRequirements) -> &Self {
        let mut ledger = self.ledger();
        ledger.agent_quotas.retain(|(a, _)| &**a != agent);
        ledger
            .agent_quotas
            .push((Arc::from(agent), amounts(&limits)));
        self
    }

    /// Caps what all runs of state `state` of agent `agent` may hold at once (0 for a kind: no
    /// cap on it).
    pub fn limit_state(&self, agent: &str, state: &str, limits: ResourceRequirements) -> &Self {
        let mut ledger = self.ledger();
        ledger
            .state_quotas
            .retain(|(a, s, _)| !(&**a == agent && &**s == state));
        ledger
            .state_quotas
            .push((Arc::from(agent), Arc::from(state), amounts(&limits)));
        self
    }

    /// The kinds `needs` asks more of than the pool has at all, or than a quota on `agent` or
    /// on its `state` allows.
    pub(crate) fn oversized(&self, agent: &str, state: &str, needs: &Amounts) -> Vec<ResourceKind> {
        let ledger = self.ledger();
        let quotas: Vec<&Amounts> = ledger
            .agent_quotas
            .iter()
            .filter(|(a, _)| &**a == agent)
            .map(|(_, q)| q)
            .chain(
                ledger
                    .state_quotas
                    .iter()
                    .filter(|(a, s, _)| &**a == agent && &**s == state)
                    .map(|(_, _, q)| q),
            )
            .collect();
        (0..5)
            .filter(|&k| {
                needs[k] > self.shared.capacity[k]
                    || quotas.iter().any(|q| q[k] > 0 && needs[k] > q[k])
            })
            .map(|k| KINDS[k])
            .collect()
    }

    /// Grants `needs` now if it fits; otherwise records that `who` waits and asks to be told
    /// (through `notify`, as a release of admission gate `gate`) when something is given back.
    pub(crate) fn try_grant(
        &self,
        who: &Claimant,
        needs: &Amounts,
        (notify, gate): (&UnboundedSender<Message>, usize),
    ) -> Option<Grant> {
        let mut ledger = self.ledger();
        let fits = (0..5)
            .all(|k| ledger.in_use[k].saturating_add(needs[k]) <= self.shared.capacity[k])
            && ledger.within_quotas(who, needs);
        let waiting_at = ledger
            .waiting
            .iter()
            .position(|(w, _, run)| *run == who.run_key && w.state == who.state);
        if !fits {
            if waiting_at.is_none() {
                for (k, &need) in needs.iter().enumerate() {
                    if need > 0 && ledger.in_use[k].saturating_add(need) > self.shared.capacity[k] {
                        ledger.waits[k] += 1;
                    }
                }
                let needs_report = to_requirements(needs);
                ledger.waiting.push((
                    Waiting {
                        agent: Arc::clone(&who.agent),
                        run_id: who.run_id,
                        state: Arc::clone(&who.state),
                        needs: needs_report,
                        waited: Duration::ZERO,
                    },
                    Instant::now(),
                    who.run_key,
                ));
            }
            if !ledger.waiters.iter().any(|(run, ..)| *run == who.run_key) {
                ledger.waiters.push((who.run_key, notify.clone(), gate));
            }
            return None;
        }
        if let Some(at) = waiting_at {
            ledger.waiting.swap_remove(at);
        }
        ledger.account(Instant::now());
        for (k, &need) in needs.iter().enumerate() {
            if need > 0 {
                ledger.in_use[k] = ledger.in_use[k].saturating_add(need);
                ledger.peak[k] = ledger.peak[k].max(ledger.in_use[k]);
                ledger.grants[k] += 1;
            }
        }
        ledger.next_grant += 1;
        let id = ledger.next_grant;
        ledger.allocations.push((
            id,
            Allocation {
                agent: Arc::clone(&who.agent),
                run_id: who.run_id,
                state: Arc::clone(&who.state),
                amounts: to_requirements(needs),
            },
        ));
        Some(Grant {
            pool: self.clone(),
            id,
            amounts: *needs,
        })
    }

    /// Forgets that a run waits (it stopped).
    pub(crate) fn forget_run(&self, run_key: u64) {
        let mut ledger = self.ledger();
        ledger.waiting.retain(|(_, _, run)| *run != run_key);
        ledger.waiters.retain(|(run, ..)| *run != run_key);
    }

    /// A key no other run of this process has.
    pub(crate) fn run_key() -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    fn release(&self, id: u64, amounts: &Amounts) {
        let waiters = {
            let mut ledger = self.ledger();
            ledger.account(Instant::now());
            for (held, &amount) in ledger.in_use.iter_mut().zip(amounts) {
                *held = held.saturating_sub(amount);
            }
            if let Some(at) = ledger
                .allocations
                .iter()
                .position(|(grant, _)| *grant == id)
            {
                ledger.allocations.swap_remove(at);
            }
            std::mem::take(&mut ledger.waiters)
        };
        // Each waiting run tries again; one that still does not fit asks again.
        for (_, waiter, gate) in waiters {
            let _ = waiter.send(Message::GateReleased { gate });
        }
    }
}

impl Ledger {
    /// Adds what was held since the last change to the time integral; `in_use` is about to
    /// change at `now`.
    fn account(&mut self, now: Instant) {
        if let Some(changed) = self.changed {
            let seconds = now.saturating_duration_since(changed).as_secs_f64();
            for (busy, &held) in self.busy.iter_mut().zip(&self.in_use) {
                *busy += held as f64 * seconds;
            }
        }
        self.changed = Some(now);
        self.since.get_or_insert(now);
    }

    /// The average share of `capacity` held from the first grant to `now`, per kind.
    fn utilisation(&self, capacity: &Amounts, now: Instant) -> [f64; 5] {
        let (Some(since), Some(changed)) = (self.since, self.changed) else {
            return [0.0; 5];
        };
        let elapsed = now.saturating_duration_since(since).as_secs_f64();
        let tail = now.saturating_duration_since(changed).as_secs_f64();
        std::array::from_fn(|k| {
            if elapsed <= 0.0 || capacity[k] == 0 {
                return 0.0;
            }
            let busy = self.busy[k] + self.in_use[k] as f64 * tail;
            busy / (capacity[k] as f64 * elapsed)
        })
    }

    /// Whether granting `needs` to `who` keeps its agent and its state within their quotas.
    fn within_quotas(&self, who: &Claimant, needs: &Amounts) -> bool {
        let held = |keep: &dyn Fn(&Allocation) -> bool| {
            let mut sum = [0u64; 5];
            for (_, a) in self.allocations.iter().filter(|(_, a)| keep(a)) {
                for (total, amount) in sum.iter_mut().zip(amounts(&a.amounts)) {
                    *total = total.saturating_add(amount);
                }
            }
            sum
        };
        let allows = |quota: &Amounts, held: Amounts| {
            (0..5).all(|k| quota[k] == 0 || held[k] + needs[k] <= quota[k])
        };
        let agent_ok = self
            .agent_quotas
            .iter()
            .filter(|(a, _)| *a == who.agent)
            .all(|(_, q)| allows(q, held(&|a: &Allocation| a.agent == who.agent)));
        let state_ok = self
            .state_quotas
            .iter()
            .filter(|(a, s, _)| *a == who.agent && *s == who.state)
            .all(|(_, _, q)| {
                allows(
                    q,
                    held(&|a: &Allocation| a.agent == who.agent && a.state == who.state),
                )
            });
        agent_ok && state_ok
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.pool.release(self.id, &self.amounts);
    }
}

fn to_requirements(a: &Amounts) -> ResourceRequirements {
    ResourceRequirements {
        cpu: value(0, a[0]),
        memory_mb: a[1],
        io: value(2, a[2]),
        network: value(3, a[3]),
        gpu: value(4, a[4]),
    }
}

/// NVIDIA GPUs as `nvidia-smi -L` lists them; 0 when it is missing or fails.
#[cfg(feature = "nvidia")]
fn detect_gpus() -> f64 {
    std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("GPU "))
                .count() as f64
        })
        .unwrap_or(0.0)
}

#[cfg(not(feature = "nvidia"))]
fn detect_gpus() -> f64 {
    0.0
}

/// Total memory in MiB from `/proc/meminfo`, where there is one.
fn total_memory_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_exact_thousandths() {
        let r = ResourceRequirements {
            cpu: 0.1,
            memory_mb: 512,
            io: 1.5,
            network: 0.0,
            gpu: 2.0,
        };
        assert_eq!(amounts(&r), [100, 512, 1500, 0, 2000]);
        assert_eq!(to_requirements(&amounts(&r)), r);
    }

    #[test]
    fn detect_sees_at_least_one_cpu() {
        let pool = ResourcePool::detect();
        assert!(pool.capacity().cpu >= 1.0);
        assert_eq!(pool.with_gpus(2.0).capacity().gpu, 2.0);
    }
}
