//! The server's migration plans, indexed by the VMs and the address they name: a request finds
//! its client's plan in logarithmic time, however many plans (ended ones included) the manager
//! has handed over, instead of scanning them all.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::plan::MigrationPlan;

/// Migration plans by id, with indexes by VM (source or destination) and by address.
#[derive(Clone, Debug, Default)]
pub struct Plans {
    by_id: BTreeMap<u64, MigrationPlan>,
    /// The plans naming each VM, as source or destination.
    by_vm: BTreeMap<String, BTreeSet<u64>>,
    /// The plans of each address.
    by_ip: BTreeMap<Ipv4Addr, BTreeSet<u64>>,
    /// The active plans of each address (at most one: [`crate::DhcpServer::add_plan`] refuses a
    /// second), and of each VM.
    active_by_ip: BTreeMap<Ipv4Addr, BTreeSet<u64>>,
    active_by_vm: BTreeMap<String, BTreeSet<u64>>,
}

impl Plans {
    /// Plan `id`.
    pub fn get(&self, id: u64) -> Option<&MigrationPlan> {
        self.by_id.get(&id)
    }

    /// Whether there is a plan `id`.
    pub fn contains(&self, id: u64) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Every plan, by id.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &MigrationPlan> {
        self.by_id.values()
    }

    /// How many plans there are.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Adds `plan`, replacing the one with its id.
    pub fn insert(&mut self, plan: MigrationPlan) {
        self.remove(plan.id);
        self.index(&plan);
        self.by_id.insert(plan.id, plan);
    }

    /// Removes plan `id`.
    pub fn remove(&mut self, id: u64) -> Option<MigrationPlan> {
        let plan = self.by_id.remove(&id)?;
        self.unindex(&plan);
        Some(plan)
    }

    /// Changes plan `id` with `change` (its state, its deadline), keeping the indexes right.
    pub fn modify<R>(&mut self, id: u64, change: impl FnOnce(&mut MigrationPlan) -> R) -> Option<R> {
        let mut plan = self.remove(id)?;
        let result = change(&mut plan);
        self.insert(plan);
        Some(result)
    }

    /// The latest plan (highest id) naming `vm` as source or destination: the one that decides
    /// what the VM is leased.
    pub fn latest_of_vm(&self, vm: &str) -> Option<&MigrationPlan> {
        self.by_vm.get(vm)?.last().and_then(|id| self.by_id.get(id))
    }

    /// The latest plan (highest id) of address `ip`.
    pub fn latest_of_ip(&self, ip: Ipv4Addr) -> Option<&MigrationPlan> {
        self.by_ip.get(&ip)?.last().and_then(|id| self.by_id.get(id))
    }

    /// The active plans of `ip` (one at most, when added through the server), by id.
    pub fn active_of_ip(&self, ip: Ipv4Addr) -> impl Iterator<Item = &MigrationPlan> {
        self.active_by_ip.get(&ip).into_iter().flatten().filter_map(|id| self.by_id.get(id))
    }

    /// Whether `vm` takes part in an active plan.
    pub fn vm_busy(&self, vm: &str) -> bool {
        self.active_by_vm.contains_key(vm)
    }

    fn index(&mut self, plan: &MigrationPlan) {
        let active = plan.is_active();
        for vm in [&plan.source, &plan.destination] {
            self.by_vm.entry(vm.clone()).or_default().insert(plan.id);
            if active {
                self.active_by_vm.entry(vm.clone()).or_default().insert(plan.id);
            }
        }
        self.by_ip.entry(plan.ip).or_default().insert(plan.id);
        if active {
            self.active_by_ip.entry(plan.ip).or_default().insert(plan.id);
        }
    }

    fn unindex(&mut self, plan: &MigrationPlan) {
        for vm in [&plan.source, &plan.destination] {
            take(&mut self.by_vm, vm, plan.id);
            take(&mut self.active_by_vm, vm, plan.id);
        }
        take(&mut self.by_ip, &plan.ip, plan.id);
        take(&mut self.active_by_ip, &plan.ip, plan.id);
    }
}

/// Removes `id` from `index[key]`, and the key once it names nothing.
fn take<K: Ord>(index: &mut BTreeMap<K, BTreeSet<u64>>, key: &K, id: u64) {
    if let Some(ids) = index.get_mut(key) {
        ids.remove(&id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;
    use crate::plan::PlanState;

    /// The indexes agree with a scan of every plan.
    fn assert_consistent(plans: &Plans) {
        for vm in ["vm-0", "vm-1", "vm-2", "vm-3"] {
            let scan = plans.values().rev().find(|p| p.source == vm || p.destination == vm);
            assert_eq!(plans.latest_of_vm(vm), scan, "{vm}");
            let busy = plans.values().any(|p| p.is_active() && (p.source == vm || p.destination == vm));
            assert_eq!(plans.vm_busy(vm), busy, "{vm}");
        }
        for i in 0..4 {
            let ip = Ipv4Addr::new(10, 0, 0, i);
            assert_eq!(plans.latest_of_ip(ip), plans.values().rev().find(|p| p.ip == ip));
            let active: Vec<_> = plans.values().filter(|p| p.ip == ip && p.is_active()).collect();
            assert_eq!(plans.active_of_ip(ip).collect::<Vec<_>>(), active);
        }
    }

    #[derive(Clone, Debug)]
    enum Step {
        Insert { id: u64, ip: u8, source: u8, destination: u8, state: u8 },
        Remove(u64),
        End { id: u64, state: u8 },
        Move { id: u64, deadline: u64 },
    }

    fn state(s: u8) -> PlanState {
        match s % 4 {
            0 => PlanState::Active,
            1 => PlanState::Completed,
            2 => PlanState::RolledBack,
            _ => PlanState::Failed("declined".into()),
        }
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..8u64, 0..4u8, 0..4u8, 0..4u8, 0..4u8).prop_map(|(id, ip, source, destination, state)| Step::Insert {
                id,
                ip,
                source,
                destination,
                state
            }),
            (0..8u64).prop_map(Step::Remove),
            (0..8u64, 0..4u8).prop_map(|(id, state)| Step::End { id, state }),
            (0..8u64, 0..2_000_000_000u64).prop_map(|(id, deadline)| Step::Move { id, deadline }),
        ]
    }

    proptest! {
        /// Through inserts (replacing a plan of the same id), removals and changes of state and
        /// deadline, every indexed lookup finds what a scan of all plans finds.
        #[test]
        fn the_indexes_agree_with_a_scan(steps in proptest::collection::vec(step(), 1..60)) {
            let mut plans = Plans::default();
            for s in steps {
                match s {
                    Step::Insert { id, ip, source, destination, state: st } => {
                        let mut plan = MigrationPlan::new(
                            id,
                            Ipv4Addr::new(10, 0, 0, ip),
                            &format!("vm-{source}"),
                            &format!("vm-{destination}"),
                            1_000,
                        );
                        plan.state = state(st);
                        plans.insert(plan);
                    }
                    Step::Remove(id) => {
                        plans.remove(id);
                    }
                    Step::End { id, state: st } => {
                        plans.modify(id, |p| p.state = state(st));
                    }
                    Step::Move { id, deadline } => {
                        plans.modify(id, |p| p.deadline = deadline);
                    }
                }
                assert_consistent(&plans);
            }
        }
    }
}
