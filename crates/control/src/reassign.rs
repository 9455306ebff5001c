//! The seed's IP reassignment call: without `migrate` the address moves at once (the classic
//! behaviour); with it a [`Migration`] is created in the same transaction that marks the address
//! as migrating, so two racing requests cannot both start one, with the plan that fits its
//! deadline ([`crate::plan`]). Every refusal changes nothing; a dry run changes nothing either.

use std::net::Ipv4Addr;

use ipshadow_core::{Affinity, Mode, Ramp, Strategy};
use serde::{Deserialize, Serialize};

use crate::inventory::{Address, Inventory, InventoryError, address_key, decode, encode, vm_key};
use crate::migration::{CutOverRecord, Lifecycle, MigrationEvent, MigrationState};
use crate::plan::{Plan, PlanInput};
use crate::store::{Compare, Store, Txn, TxnOutcome};

/// `POST /v1/addresses/{ip}/reassign`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReassignRequest {
    /// The VM that gets the address.
    pub to: String,
    /// Move it gradually without dropping connections (a migration) instead of at once.
    #[serde(default)]
    pub migrate: bool,
    /// How the split rises (default: 1, 5, 25, 50, 100 % every 30 s).
    #[serde(default)]
    #[schema(value_type = Option<crate::api::schema::RampSchema>)]
    pub ramp: Option<Ramp>,
    /// Per flow or per client.
    #[serde(default)]
    #[schema(value_type = Option<crate::api::schema::AffinitySchema>)]
    pub affinity: Option<Affinity>,
    /// Independent or replica.
    #[serde(default)]
    #[schema(value_type = Option<crate::api::schema::ModeSchema>)]
    pub mode: Option<Mode>,
    /// Split strategy (flow; packet and instant exist for comparison).
    #[serde(default)]
    #[schema(value_type = Option<crate::api::schema::StrategySchema>)]
    pub strategy: Option<Strategy>,
    /// Cut-over time, unix milliseconds; default: the end of the source's current lease.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Only say what would happen (the plan, with `migrate`): the same checks and refusals,
    /// nothing created or changed.
    #[serde(default)]
    pub dry_run: bool,
}

/// Limits the operator sets on requested deadlines, and how plans are fitted to them (the
/// `[policy]` section of `ipshadow serve`'s configuration).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeadlinePolicy {
    /// Shortest time from now to the cut-over.
    pub min_ms: u64,
    /// Longest time from now to the cut-over.
    pub max_ms: u64,
    /// Used when the source's lease end is unknown and nothing was requested.
    pub default_ms: u64,
    /// Share of the time to the deadline the default ramp is fitted into, in (0, 1]; the rest
    /// is left for A's flows to drain before the cut-over.
    pub plan_share: f64,
    /// Time B's DHCP client is given to bind the address and answer for it before the ramp
    /// starts: a ramp fits when it reaches 100 % within the time to the deadline minus this.
    pub ready_allowance_ms: u64,
    /// The closing window before the deadline: from deadline - this, every new flow goes to B
    /// and A's last TCP flows are closed with a FIN at an idle moment. The default ramp is fitted
    /// to leave it; a deadline too close for the whole window leaves what remains after the ramp
    /// (the plan's `close_grace_ms`).
    pub close_grace_ms: u64,
    /// The most the manager may move a migration's deadline past the one it was created with,
    /// so that A's forecast drain fits (never past the longest deadline either).
    pub max_extension_ms: u64,
}

impl Default for DeadlinePolicy {
    /// 30 s to 7 days; 1 hour when nothing else says; the default ramp fitted into half the
    /// time to the deadline; 10 s for B to be ready; a 10 s closing window; extensions of an
    /// hour at most.
    fn default() -> Self {
        Self {
            min_ms: 30_000,
            max_ms: 7 * 24 * 3_600_000,
            default_ms: 3_600_000,
            plan_share: 0.5,
            ready_allowance_ms: 10_000,
            close_grace_ms: 10_000,
            max_extension_ms: 3_600_000,
        }
    }
}

/// Why a [`DeadlinePolicy`] cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The deadlines' limits are out of order.
    #[error("need 0 < min_deadline <= default_deadline <= max_deadline")]
    DeadlineOrder,
    /// The plan share is not in (0, 1].
    #[error("plan_share must be within (0, 1], not {0}")]
    PlanShare(f64),
    /// The shortest deadline leaves the default ramp no room even at its shortest holds.
    #[error(
        "min_deadline ({min_ms} ms) must leave room for ready_allowance ({ready_allowance_ms} ms) and the default \
         ramp at 1 s per step ({ramp_ms} ms)"
    )]
    NoRoomForRamp {
        /// The shortest deadline, milliseconds.
        min_ms: u64,
        /// The readiness allowance, milliseconds.
        ready_allowance_ms: u64,
        /// The default ramp's time to 100 % at its shortest holds, milliseconds.
        ramp_ms: u64,
    },
}

impl DeadlinePolicy {
    /// Checks the policy can be followed: with it, the default ramp fits every deadline the
    /// policy allows (so a request without a ramp is never refused for its ramp).
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.min_ms == 0 || self.min_ms > self.default_ms || self.default_ms > self.max_ms {
            return Err(PolicyError::DeadlineOrder);
        }
        if !(self.plan_share.is_finite() && self.plan_share > 0.0 && self.plan_share <= 1.0) {
            return Err(PolicyError::PlanShare(self.plan_share));
        }
        // Every allowed deadline is at least `min_ms` away: if the default ramp fits that one
        // (at 1 s holds if need be), it fits every one.
        let min_ramp = PlanInput {
            requested: None,
            now_ms: 0,
            deadline_ms: self.min_ms,
            deadline_source: DeadlineSource::Requested,
        };
        match crate::plan::plan(min_ramp, self) {
            Ok(_) => Ok(()),
            Err(misfit) => Err(PolicyError::NoRoomForRamp {
                min_ms: self.min_ms,
                ready_allowance_ms: self.ready_allowance_ms,
                ramp_ms: misfit.ramp_to_100_ms.unwrap_or(0),
            }),
        }
    }
}

/// Where a migration's deadline came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadlineSource {
    /// The caller asked for it (within the policy's limits).
    Requested,
    /// The end of A's current lease, from the DHCP server in the process (the seed's rule).
    SourceLeaseEnd,
    /// The policy's default (no request, no DHCP server to ask).
    PolicyDefault,
    /// Moved later by the manager so that A's forecast drain ends before the closing window
    /// (the history's `deadline_extended` says from what, to what and why).
    DrainForecast,
}

/// A migration as stored under `/v1/migrations/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Migration {
    /// Its id.
    pub id: u64,
    /// The address.
    #[schema(value_type = String, format = Ipv4)]
    pub ip: Ipv4Addr,
    /// The tenant that owns the address.
    pub tenant: String,
    /// VM A.
    pub source: String,
    /// VM B.
    pub destination: String,
    /// Strategy.
    #[schema(value_type = crate::api::schema::StrategySchema)]
    pub strategy: Strategy,
    /// Mode.
    #[schema(value_type = crate::api::schema::ModeSchema)]
    pub mode: Mode,
    /// Affinity.
    #[schema(value_type = crate::api::schema::AffinitySchema)]
    pub affinity: Affinity,
    /// The ramp the router follows (the plan's).
    #[schema(value_type = crate::api::schema::RampSchema)]
    pub ramp: Ramp,
    /// Cut-over time, unix milliseconds.
    pub deadline_ms: u64,
    /// Where the deadline came from.
    pub deadline_source: DeadlineSource,
    /// How the ramp was fitted to the deadline (its `ramp`, `deadline_ms` and
    /// `deadline_source` are the migration's). Absent on migrations stored before plans existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// When it was created, unix milliseconds.
    pub created_ms: u64,
    /// The split last reported by the router, percent.
    pub split_pct: f64,
    /// State and history, and whether the user promoted B ([`Lifecycle::promoted`]).
    pub lifecycle: Lifecycle,
    /// What the router's cut-over did to A's last flows and why it came when it did (early
    /// finish: `cause: drained`, `early_by_ms`); absent until the router reports the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_over: Option<CutOverRecord>,
}

/// Key of a migration.
pub fn migration_key(id: u64) -> String {
    format!("/v1/migrations/{id:020}")
}

/// The counter of migration ids.
const NEXT_ID: &str = "/v1/meta/next_migration_id";

/// What a reassignment did.
#[derive(Clone, Debug, PartialEq)]
pub enum Reassigned {
    /// The address moved at once.
    Moved,
    /// A migration started.
    Migrating(Box<Migration>),
    /// A dry run without `migrate`: the address would move at once (nothing changed).
    WouldMove,
    /// A dry run with `migrate`: a migration would start with this plan (nothing changed).
    WouldMigrate(Box<Plan>),
}

impl<S: Store> Inventory<S> {
    /// Refuses a migration of `ip` (of `tenant`, held by A) to `to` when A or `to` already takes
    /// part in an unfinished migration of another address: a DHCP server leases each VM one
    /// address, so with one in the process a second plan for a busy VM would fail at once. An
    /// address the caller may not see is 404 first, as in [`Inventory::reassign`].
    pub fn refuse_busy_vms(&self, tenant: Option<&str>, ip: Ipv4Addr, to: &str) -> Result<(), InventoryError> {
        let holder = self.address(tenant, ip)?.value.vm;
        let vms = [holder.as_deref(), Some(to)];
        for m in self.migrations(None)?.iter().filter(|m| !m.lifecycle.state.is_final() && m.ip != ip) {
            if let Some(vm) = vms.iter().flatten().find(|vm| **vm == m.source || **vm == m.destination) {
                return Err(InventoryError::Conflict(format!(
                    "{vm} already takes part in migration {} of {}: the DHCP server leases a VM one address, \
                     so one migration per VM at a time (let it end or abort it first)",
                    m.id, m.ip
                )));
            }
        }
        Ok(())
    }

    /// Reassigns `ip` (of `tenant`; `None` is the admin) to `request.to`. `source_lease_end_ms`
    /// is when the DHCP server says A's current lease ends, if it knows. With
    /// `request.dry_run`, every check is made and nothing is written (no id is taken either).
    pub fn reassign(
        &self,
        tenant: Option<&str>,
        ip: Ipv4Addr,
        request: &ReassignRequest,
        now_ms: u64,
        source_lease_end_ms: Option<u64>,
        policy: DeadlinePolicy,
    ) -> Result<Reassigned, InventoryError> {
        let address = self.address(tenant, ip)?;
        let owner = address.value.tenant.clone();
        // The target must be the address owner's VM (an admin cannot give a tenant's address to
        // another tenant's VM either).
        let target = self.vm(Some(&owner), &request.to)?;
        if let Some(id) = address.value.migration {
            return Err(InventoryError::Conflict(format!("{ip} is already migrating (migration {id})")));
        }
        if request.migrate && address.value.vm.is_none() {
            return Err(InventoryError::Conflict(format!(
                "{ip} is held by no VM: nothing to migrate (reassign it without migrate)"
            )));
        }
        if address.value.vm.as_deref() == Some(request.to.as_str()) {
            return Err(InventoryError::Conflict(format!("{ip} is already held by {}", request.to)));
        }
        // The target's record is written again (unchanged): a `remove_vm` that checked it held
        // nothing before this commits then fails its own compare on the record's revision.
        let base = Txn::new()
            .when(Compare::ModRevision(address_key(ip), address.revision))
            .when(Compare::ModRevision(vm_key(&request.to), target.revision))
            .put(vm_key(&request.to), encode(&target.value));
        let Some(source) = address.value.vm.clone().filter(|_| request.migrate) else {
            if request.ramp.is_some() || request.deadline_ms.is_some() {
                return Err(InventoryError::Invalid("ramp and deadline apply only with migrate=true".into()));
            }
            if request.dry_run {
                return Ok(Reassigned::WouldMove);
            }
            let moved = Address { vm: Some(request.to.clone()), ..address.value };
            return match self.commit(base.put(address_key(ip), encode(&moved)))? {
                TxnOutcome::Committed(_) => Ok(Reassigned::Moved),
                TxnOutcome::Failed(_) => Err(InventoryError::Raced),
            };
        };
        if let Some(ramp) = &request.ramp {
            ramp.validate().map_err(|e| InventoryError::Invalid(format!("ramp: {e}")))?;
        }
        let (deadline_ms, deadline_source) = match (request.deadline_ms, source_lease_end_ms) {
            (Some(d), _) => {
                let earliest = now_ms + policy.min_ms;
                let latest = now_ms + policy.max_ms;
                if d < earliest || d > latest {
                    return Err(InventoryError::Invalid(format!(
                        "deadline must be between {} s and {} s from now",
                        policy.min_ms / 1000,
                        policy.max_ms / 1000
                    )));
                }
                (d, DeadlineSource::Requested)
            }
            (None, Some(end)) => (end.max(now_ms + policy.min_ms), DeadlineSource::SourceLeaseEnd),
            (None, None) => (now_ms + policy.default_ms, DeadlineSource::PolicyDefault),
        };
        let input = PlanInput { requested: request.ramp.as_ref(), now_ms, deadline_ms, deadline_source };
        let plan = crate::plan::plan(input, &policy).map_err(InventoryError::RampDoesNotFit)?;
        if request.dry_run {
            return Ok(Reassigned::WouldMigrate(Box::new(plan)));
        }
        let (next, next_revision) = match self.store().get(NEXT_ID)? {
            Some(kv) => (decode::<u64>(&kv)?.value, Some(kv.mod_revision)),
            None => (1, None),
        };
        let migration = Migration {
            id: next,
            ip,
            tenant: owner,
            source,
            destination: request.to.clone(),
            strategy: request.strategy.unwrap_or_default(),
            mode: request.mode.unwrap_or_default(),
            affinity: request.affinity.unwrap_or_default(),
            ramp: plan.ramp.clone(),
            deadline_ms,
            deadline_source,
            plan: Some(plan),
            created_ms: now_ms,
            split_pct: 0.0,
            lifecycle: Lifecycle::new(),
            cut_over: None,
        };
        let marked = Address { migration: Some(next), ..address.value };
        let counter = match next_revision {
            Some(r) => Compare::ModRevision(NEXT_ID.to_owned(), r),
            None => Compare::Absent(NEXT_ID.to_owned()),
        };
        let txn = base
            .when(counter)
            .put(address_key(ip), encode(&marked))
            .put(migration_key(next), encode(&migration))
            .put(NEXT_ID, encode(&(next + 1)));
        match self.commit(txn)? {
            TxnOutcome::Committed(_) => Ok(Reassigned::Migrating(Box::new(migration))),
            TxnOutcome::Failed(_) => Err(InventoryError::Raced),
        }
    }

    /// Every migration `tenant` may see, oldest first.
    pub fn migrations(&self, tenant: Option<&str>) -> Result<Vec<Migration>, InventoryError> {
        self.visible_records("/v1/migrations/", tenant, |m: &Migration| &m.tenant)
    }

    /// A migration, if `tenant` may see it.
    pub fn migration(&self, tenant: Option<&str>, id: u64) -> Result<Migration, InventoryError> {
        let not_found = || InventoryError::NotFound { kind: "migration", id: id.to_string() };
        let kv = self.store().get(&migration_key(id))?.ok_or_else(not_found)?;
        let m: Migration = decode(&kv)?.value;
        if tenant.is_none_or(|t| t == m.tenant) { Ok(m) } else { Err(not_found()) }
    }
}

impl<S: Store> Inventory<S> {
    /// Applies `event` to migration `id` at `now_ms` and, when it ends the migration, gives the
    /// address to the winner (B after a cut-over, A otherwise) and clears its migration mark, in
    /// one transaction. A refused transition changes nothing.
    pub fn advance(&self, id: u64, event: MigrationEvent, now_ms: u64) -> Result<Migration, InventoryError> {
        let kv = self
            .store()
            .get(&migration_key(id))?
            .ok_or(InventoryError::NotFound { kind: "migration", id: id.to_string() })?;
        let stored = decode::<Migration>(&kv)?;
        let mut m = stored.value;
        m.lifecycle.apply(event, now_ms).map_err(|e| InventoryError::Conflict(e.to_string()))?;
        self.sign(&mut m);
        if m.lifecycle.state == MigrationState::Completed {
            m.split_pct = 100.0;
        }
        let mut txn = Txn::new()
            .when(Compare::ModRevision(migration_key(id), stored.revision))
            .put(migration_key(id), encode(&m));
        if m.lifecycle.state.is_final() {
            let address = self.address(None, m.ip)?;
            let winner = if m.lifecycle.state == MigrationState::Completed { &m.destination } else { &m.source };
            let released = Address { vm: Some(winner.clone()), migration: None, ..address.value };
            txn = txn
                .when(Compare::ModRevision(address_key(m.ip), address.revision))
                .put(address_key(m.ip), encode(&released));
        }
        match self.commit(txn)? {
            TxnOutcome::Committed(_) => Ok(m),
            TxnOutcome::Failed(_) => Err(InventoryError::Raced),
        }
    }

    /// Moves migration `id`'s deadline as `extension` says (later only), with its
    /// `deadline_extended` history entry and `deadline_source: drain_forecast`, in one
    /// transaction: the DHCP server's lease plan and the router's entry follow the store. A
    /// deadline that changed since the decision was made is a conflict (decided again on the
    /// next report).
    pub fn extend_deadline(
        &self,
        id: u64,
        extension: &crate::extend::Extension,
        now_ms: u64,
    ) -> Result<Migration, InventoryError> {
        let kv = self
            .store()
            .get(&migration_key(id))?
            .ok_or(InventoryError::NotFound { kind: "migration", id: id.to_string() })?;
        let stored = decode::<Migration>(&kv)?;
        let mut m = stored.value;
        if m.deadline_ms != extension.from_ms {
            return Err(InventoryError::Conflict(format!(
                "migration {id}'s deadline is {} now, not {}",
                m.deadline_ms, extension.from_ms
            )));
        }
        let event = MigrationEvent::DeadlineExtended {
            from_ms: extension.from_ms,
            to_ms: extension.to_ms,
            reason: extension.reason.clone(),
        };
        m.lifecycle.apply(event, now_ms).map_err(|e| InventoryError::Conflict(e.to_string()))?;
        self.sign(&mut m);
        m.deadline_ms = extension.to_ms;
        m.deadline_source = DeadlineSource::DrainForecast;
        let txn = Txn::new()
            .when(Compare::ModRevision(migration_key(id), stored.revision))
            .put(migration_key(id), encode(&m));
        match self.commit(txn)? {
            TxnOutcome::Committed(_) => Ok(m),
            TxnOutcome::Failed(_) => Err(InventoryError::Raced),
        }
    }

    /// Records what the router's cut-over of migration `id` did (once: a record already there
    /// is kept, the router repeats its report).
    pub fn record_cut_over(&self, id: u64, record: CutOverRecord) -> Result<Migration, InventoryError> {
        let kv = self
            .store()
            .get(&migration_key(id))?
            .ok_or(InventoryError::NotFound { kind: "migration", id: id.to_string() })?;
        let stored = decode::<Migration>(&kv)?;
        let mut m = stored.value;
        if m.cut_over.is_some() {
            return Ok(m);
        }
        m.cut_over = Some(record);
        let txn = Txn::new()
            .when(Compare::ModRevision(migration_key(id), stored.revision))
            .put(migration_key(id), encode(&m));
        match self.commit(txn)? {
            TxnOutcome::Committed(_) => Ok(m),
            TxnOutcome::Failed(_) => Err(InventoryError::Raced),
        }
    }

    /// Records the split the router reports for migration `id` (where a restarted router
    /// resumes). Nothing is written when it did not change.
    pub fn record_split(&self, id: u64, split_pct: f64) -> Result<(), InventoryError> {
        let Some(kv) = self.store().get(&migration_key(id))? else { return Ok(()) };
        let stored = decode::<Migration>(&kv)?;
        let mut m = stored.value;
        if m.split_pct == split_pct || m.lifecycle.state.is_final() || !split_pct.is_finite() {
            return Ok(());
        }
        m.split_pct = split_pct.clamp(0.0, 100.0);
        let txn = Txn::new()
            .when(Compare::ModRevision(migration_key(id), stored.revision))
            .put(migration_key(id), encode(&m));
        match self.commit(txn)? {
            TxnOutcome::Committed(_) => Ok(()),
            TxnOutcome::Failed(_) => Err(InventoryError::Raced),
        }
    }
}
