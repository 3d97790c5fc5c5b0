//! The checks that run during a simulation and at its end.

use super::*;

impl<W: Workload> Simulation<W> {
    // ----- checks -----

    pub(super) fn trace(&self, line: impl FnOnce() -> String) {
        if self.config.trace {
            eprintln!("{:>10} {}", self.now.0, line());
        }
    }

    pub(super) fn violation(&mut self, v: String) {
        self.violation_count += 1;
        if self.config.stop_on_violation && self.stop.is_none() {
            self.stop = Some(Stop::Finished);
        }
        if self.violations.len() < MAX_LISTED_VIOLATIONS {
            self.violations.push(format!("[t={} us] {v}", self.now.0));
        }
    }

    pub(super) fn count_decode_error(&mut self, what: &str, e: &CodecError) {
        let key = format!("{what}: {}", e.kind());
        *self.counters.decode_errors.entry(key).or_insert(0) += 1;
    }

    pub(super) fn observe_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.observe(i);
        }
    }

    /// Checks replica `i`'s newly committed hashes and newly reached state digests against the
    /// first ones any replica reported, and its divergence flag.
    pub(super) fn observe(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let Some(r) = node.replica.as_ref().filter(|_| !node.is_byzantine()) else {
            return;
        };
        let mut found = Vec::new();
        let commit = r.commit_index();
        // Below its stable checkpoint a replica holds no entries; the checkpoint's own entry
        // hash still chains them.
        let from = (node.checked_commit.0 + 1).max(r.checkpoint_index().0);
        for index in (from..=commit.0).map(Index) {
            match r.entry_hash(index) {
                Some(h) => {
                    found.extend(self.monitor.committed(node.id, index, h));
                    if let Some(entry) = r.entry(index) {
                        self.ledger.entry(index).or_insert_with(|| entry.clone());
                    }
                }
                None => found.push(format!(
                    "{} reports commit index {commit} but holds no entry at {index}",
                    node.id
                )),
            }
        }
        let held = r.log_len() as u64;
        self.counters.max_log_entries = self.counters.max_log_entries.max(held);
        let limit = self.cluster.params().max_log_entries();
        if held > limit {
            found.push(format!(
                "{} holds {held} log entries, above the bound of {limit}",
                node.id
            ));
        }
        node.checked_commit = node.checked_commit.max(commit);
        let applied = r.applied_index();
        if applied > commit {
            found.push(format!(
                "{} executed up to {applied}, beyond its commit index {commit}",
                node.id
            ));
        }
        for index in (node.checked_applied.0 + 1..=applied.0).map(Index) {
            if let Some(d) = r.state_digest_at(index) {
                found.extend(self.monitor.digest(node.id, index, d));
            }
        }
        node.checked_applied = node.checked_applied.max(applied);
        if let Some(d) = r.divergence() {
            if !node.divergence_reported {
                node.divergence_reported = true;
                found.push(format!(
                    "{} diverged: its digest {} after index {} differs from the certified {}",
                    node.id, d.local, d.index, d.certified
                ));
            }
        }
        for v in found {
            self.violation(v);
        }
    }

    pub(super) fn check_liveness(&mut self) {
        let bound = self.config.liveness_bound;
        for (i, c) in self.clients.iter().enumerate() {
            let Some(position) = c.outstanding else {
                continue;
            };
            let Some(op) = self.history.ops.get(position) else {
                continue;
            };
            let deadline = SimClient::deadline(op.invoked, self.heal_at, bound);
            if self.now > deadline {
                let replicas: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| match &n.replica {
                        Some(r) => format!(
                            "{}: commit {} applied {} tip {} held {}",
                            n.id,
                            r.commit_index(),
                            r.applied_index(),
                            r.last_index(),
                            r.held_messages()
                        ),
                        None => format!("{}: down", n.id),
                    })
                    .collect();
                self.stop = Some(Stop::Liveness(format!(
                    "client {i}'s tx (ts {}) submitted at {:.3} s was not accepted by {:.3} s \
                     (retries {}); replicas: [{}]",
                    op.ts,
                    op.invoked.0 as f64 / 1e6,
                    deadline.0 as f64 / 1e6,
                    c.client.stats().retries,
                    replicas.join("; ")
                )));
                return;
            }
        }
    }

    /// Schedules the end of the run once every client is done and the fault phase is over.
    pub(super) fn maybe_finish(&mut self) {
        if self.end_scheduled || !self.healed || !self.clients.iter().all(SimClient::done) {
            return;
        }
        self.end_scheduled = true;
        self.queue
            .push(self.now.after(self.config.settle), Event::End);
    }

    pub(super) fn finish(mut self) -> SimReport {
        self.observe_all();
        let cluster_id = *self.cluster.cluster_id();
        // The committed log, as the replicas reported it while running (each index's entry
        // recorded the first time a correct replica reported it committed; the monitor checked
        // that every report agreed). Replicas compact their logs, so it is not read back from
        // them at the end.
        let mut max_term = 0;
        let mut commits = Vec::new();
        for n in self.nodes.iter().filter(|n| !n.is_byzantine()) {
            if let Some(r) = &n.replica {
                max_term = max_term.max(r.term().0);
                commits.push(r.commit_index());
                self.counters.rebuilding_at_end += u64::from(r.is_rebuilding());
            }
        }
        let entries: Vec<Entry> = self
            .ledger
            .iter()
            .enumerate()
            .take_while(|(position, (index, _))| index.0 == *position as u64 + 1)
            .map(|(_, (_, entry))| entry.clone())
            .collect();
        if entries.len() < self.ledger.len() {
            self.violation(format!(
                "simulator: no correct replica was seen holding committed entry {}",
                entries.len() + 1
            ));
        }
        let mut report = SimReport {
            seed: self.config.seed,
            replicas: self.config.replicas,
            submitted_txs: self.history.ops.len() as u64,
            accepted_txs: self.history.accepted() as u64,
            end_time: self.now,
            max_term,
            last_acceptance: self.history.last_acceptance(),
            byzantine: self.config.byzantine.as_ref().map(|b| b.strategy),
            mutant: self.config.mutant,
            ..SimReport::default()
        };
        {
            let mut found =
                check::check_validity(&cluster_id, "the committed log", &entries, &self.history);
            let mut reference = self.workload.new_app();
            let replay = Replay::run(&entries, &mut reference);
            for v in self.workload.app_violations(&reference) {
                found.push(format!("reference replay of the committed log: {v}"));
            }
            found.extend(check::check_linearizability(&self.history, &replay));
            report.committed_txs = replay.executed.len() as u64;
            report.committed_entries = entries.len() as u64;
            report.lagging_replicas = commits
                .iter()
                .filter(|c| c.0 < entries.len() as u64)
                .count();
            for v in found {
                self.violation(v);
            }
        }
        for i in 0..self.nodes.len() {
            if let Some(r) = self.nodes[i].replica.take() {
                self.retire(i, r);
            }
        }
        for c in &self.clients {
            let s = c.client.stats();
            self.counters.client_retries += s.retries;
            self.counters.invalid_replies += s.invalid();
        }
        report.liveness_failure = match self.stop {
            Some(Stop::Liveness(why)) => Some(why),
            _ => None,
        };
        report.violations = self.violations;
        report.violation_count = self.violation_count;
        report.counters = self.counters;
        report
    }
}
