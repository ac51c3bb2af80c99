//! The branches and joins of a run as a checkpoint keeps them, and rebuilding them.

use flow_core::{StateGraph, StateId};
use serde::{Deserialize, Serialize};

use super::scope::Scope;
use super::{Branch, BranchId, Joins, ScopeId, chain_openers};

/// The scopes of a run and their held sets. Counts are not kept: a restore rebuilds them from
/// the branches the checkpoint's work and waits stand for. (Format 1 called scopes "groups";
/// its groups read as scopes.)
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct JoinsImage {
    #[serde(alias = "groups")]
    scopes: Vec<Option<Scope>>,
    /// Whether branches were told apart, and the id the next one gets.
    #[serde(default)]
    track: bool,
    #[serde(default)]
    next_branch: BranchId,
}

impl Joins {
    /// What a checkpoint keeps of the branches. (Taken between events, when nothing is being
    /// released or blocked.)
    pub(crate) fn image(&self) -> JoinsImage {
        JoinsImage {
            scopes: self.scopes.clone(),
            track: self.track,
            next_branch: self.next_branch,
        }
    }

    /// The branches of a checkpoint, for a graph of the same definition. `branches` are the
    /// checkpoint's due attempts and waits, by state and scope: with the held sets and the
    /// child scopes they are every live branch, so every count (live branches, positions,
    /// held sets' ancestors and blockers, totals, roots) is recomputed from them; only the
    /// scopes' parents and openers and the held sets' states and members are read. Anything
    /// that does not fit together is an error (a damaged checkpoint), never a panic later.
    pub(crate) fn restore(
        graph: &StateGraph,
        image: &JoinsImage,
        branches: &[(StateId, Branch)],
    ) -> Result<Self, String> {
        let n = graph.len();
        let state_ok = |s: StateId| s.index() < n;
        let mut scopes = image.scopes.clone();
        let len = scopes.len();
        if len > u32::MAX as usize / 2 {
            return Err(format!("{len} scopes"));
        }
        for (id, scope) in scopes.iter().enumerate() {
            let Some(s) = scope else { continue };
            // Parents exist, and following them ends (no cycle).
            let mut at = s.parent;
            let mut steps = 0;
            while let Some((parent, anchor)) = at {
                let exists = (parent as usize) < len && scopes[parent as usize].is_some();
                if !exists || !state_ok(anchor) || steps > len || parent as usize == id {
                    return Err(format!("scope {id} has a missing or circular parent"));
                }
                at = scopes[parent as usize].as_ref().and_then(|p| p.parent);
                steps += 1;
            }
            for (i, h) in s.held.iter().enumerate() {
                if !state_ok(h.state) || h.members == 0 || h.members > 1 << 20 {
                    return Err(format!(
                        "scope {id} holds {} branches at state {}",
                        h.members,
                        h.state.index()
                    ));
                }
                if s.held[..i].iter().any(|other| other.state == h.state) {
                    return Err(format!("scope {id} holds two sets at one state"));
                }
            }
        }
        for s in scopes.iter_mut().flatten() {
            *s = Scope {
                held: std::mem::take(&mut s.held),
                spent: s.spent,
                branch: s.branch,
                ..Scope::new(s.parent, 0)
            };
        }
        let place = |scopes: &mut [Option<Scope>], scope: ScopeId, state: StateId, count: u32| {
            let Some(Some(s)) = scopes.get_mut(scope as usize) else {
                return Err(format!(
                    "a branch is in scope {scope}, which does not exist"
                ));
            };
            if !state_ok(state) {
                return Err("a branch is at a state that does not exist".to_owned());
            }
            s.live = s
                .live
                .checked_add(count)
                .filter(|live| *live <= 1 << 24)
                .ok_or_else(|| format!("scope {scope} has more branches than a run can hold"))?;
            for _ in 0..count {
                s.add_position(graph, state);
            }
            Ok(())
        };
        for &(state, branch) in branches {
            place(&mut scopes, branch.scope, state, 1)?;
        }
        let children: Vec<(ScopeId, StateId, bool)> = scopes
            .iter()
            .filter_map(|s| {
                let s = s.as_ref()?;
                let (parent, opener) = s.parent?;
                Some((parent, opener, s.spent))
            })
            .collect();
        let mut joins = Self::new(graph);
        joins.track = image.track;
        // Ids stay unique: past every id the checkpoint mentions.
        let highest = branches
            .iter()
            .map(|(_, b)| b.id)
            .chain(scopes.iter().flatten().flat_map(|s| {
                let held = s.held.iter().flat_map(|h| h.branches.iter().copied());
                std::iter::once(s.branch).chain(held)
            }))
            .max();
        let next = match highest {
            Some(highest) => highest.checked_add(1),
            None => Some(0),
        };
        joins.next_branch = next
            .map(|next| next.max(image.next_branch))
            .ok_or_else(|| "a branch id is out of range".to_owned())?;
        for &(parent, opener, spent) in &children {
            place(&mut scopes, parent, opener, 1)?;
            if let Some(Some(p)) = scopes.get_mut(parent as usize) {
                p.children += 1;
                if spent {
                    *p.spent_at.entry(opener).or_insert(0) += 1;
                }
            }
            joins.opened_by[opener.index()] += 1;
        }
        let held: Vec<(ScopeId, StateId, u32)> = scopes
            .iter()
            .enumerate()
            .filter_map(|(id, s)| s.as_ref().map(|s| (id as ScopeId, s)))
            .flat_map(|(id, s)| s.held.iter().map(move |h| (id, h.state, h.members)))
            .collect();
        for (scope, state, members) in held {
            place(&mut scopes, scope, state, members)?;
        }
        let mut openers = Vec::new();
        for id in 0..scopes.len() {
            chain_openers(&scopes, id as ScopeId, &mut openers);
            let Some(s) = scopes[id].as_mut() else {
                continue;
            };
            if s.live == 0 {
                return Err(format!("scope {id} has no branch left"));
            }
            if s.parent.is_none() {
                joins.roots += 1;
            }
            s.held_members = s.held.iter().map(|h| h.members).sum();
            joins.held_total += s.held_members as usize;
            for h in &s.held {
                joins.held_sets_at[h.state.index()] += 1;
            }
            if s.live == 1 {
                if !s.held.is_empty() {
                    return Err(format!("scope {id} holds its only branch"));
                }
                // Positions are kept only while more than one branch lives.
                s.clear_positions();
                continue;
            }
            let limit = if s.wild > 0 {
                u32::MAX
            } else {
                s.highest_order()
            };
            for i in 0..s.held.len() {
                let state = s.held[i].state;
                joins.search.collect(graph, state, limit, &openers);
                let members = if Some(state) == s.opener() {
                    0
                } else {
                    s.held[i].members
                };
                let blockers = s.blockers_of(graph, state, &joins.search.found, members);
                if blockers == 0 {
                    return Err(format!(
                        "scope {id} holds branches at state {} that nothing may reach",
                        state.index()
                    ));
                }
                let h = &mut s.held[i];
                h.blockers = blockers;
                h.ancestors = joins.search.found.iter().copied().collect();
            }
        }
        joins.ledger.created = scopes
            .iter()
            .flatten()
            .map(|s| u64::from(s.live - s.children))
            .sum();
        joins.free = (0..len as ScopeId)
            .filter(|&id| scopes[id as usize].is_none())
            .collect();
        joins.scopes = scopes;
        Ok(joins)
    }

    /// Whether `other` (rebuilt from a checkpoint of this) counts the same branches: live
    /// branches, children, positions, held sets and their blockers, totals. For the debug
    /// check that every checkpoint restores to what it was taken of.
    #[cfg(debug_assertions)]
    pub(crate) fn same_counts(&self, other: &Self) -> Result<(), String> {
        if (self.roots, self.held_total) != (other.roots, other.held_total)
            || self.held_sets_at != other.held_sets_at
            || self.opened_by != other.opened_by
        {
            return Err(format!(
                "roots/held {:?} vs {:?}",
                (self.roots, self.held_total),
                (other.roots, other.held_total)
            ));
        }
        if self.live_branches() != other.live_branches() {
            return Err("live branches differ".to_owned());
        }
        for (id, (a, b)) in self.scopes.iter().zip(&other.scopes).enumerate() {
            let (Some(a), Some(b)) = (a, b) else {
                if a.is_some() != b.is_some() {
                    return Err(format!("scope {id} exists in one only"));
                }
                continue;
            };
            let counts = |s: &Scope| (s.live, s.held_members, s.children, s.spent, s.parent);
            if counts(a) != counts(b) {
                return Err(format!("scope {id}: {:?} vs {:?}", counts(a), counts(b)));
            }
            if a.live > 1
                && (a.positions != b.positions || a.wild != b.wild || a.orders != b.orders)
            {
                return Err(format!(
                    "scope {id}: positions {:?} vs {:?}",
                    a.positions, b.positions
                ));
            }
            if a.live > 1 && a.spent_at != b.spent_at {
                return Err(format!(
                    "scope {id}: spent {:?} vs {:?}",
                    a.spent_at, b.spent_at
                ));
            }
            let held = |s: &Scope| -> Vec<(StateId, u32, u32)> {
                s.held
                    .iter()
                    .map(|h| (h.state, h.members, h.blockers))
                    .collect()
            };
            if held(a) != held(b) {
                return Err(format!("scope {id}: held {:?} vs {:?}", held(a), held(b)));
            }
        }
        Ok(())
    }
}
