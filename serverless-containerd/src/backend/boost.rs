//! The startup CPU boost's bookkeeping: the engine-wide budget of boosted instances
//! ([`BoostBudget`], at most N at once, each to at most the cap), the permit a boosted start
//! holds ([`BoostPermit`]), and [`until_listening`], which holds it while the instance boots and
//! has the slot applied the moment it listens, or at the startup deadline.
//!
//! A standby's task is created boosted without a permit: it runs nothing until it is taken, and
//! the start that takes it gets a permit then (or applies the slot before starting it).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serverless_core::{AppSpec, BackendError};
use tokio::time::Instant;

/// At most `max` instances boosted at once, each to at most `cap_millicpu`.
#[derive(Debug)]
pub(crate) struct BoostBudget {
    max: u32,
    cap_millicpu: u32,
    in_use: AtomicU32,
}

impl BoostBudget {
    pub(crate) fn new(max: u32, cap_millicpu: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            cap_millicpu,
            in_use: AtomicU32::new(0),
        })
    }

    /// The CPU an instance of `app` boots with when it gets a permit, in thousandths of a vCPU;
    /// `None` when it boots at its slot (boost off for the app or the engine, or no more than
    /// the slot).
    pub(crate) fn millicpu_for(&self, app: &AppSpec) -> Option<u32> {
        if self.max == 0 {
            return None;
        }
        app.startup_cpu_boost
            .boosted_millicpu(app.slot, self.cap_millicpu)
    }

    /// A permit to boot boosted, unless `max` instances already do.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<BoostPermit> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(BoostPermit {
            budget: self.clone(),
        })
    }

    /// Instances booting boosted now, or having their slot applied after the boost.
    pub(crate) fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Acquire)
    }
}

/// One instance's share of the budget; given back when dropped.
#[derive(Debug)]
pub(crate) struct BoostPermit {
    budget: Arc<BoostBudget>,
}

impl Drop for BoostPermit {
    fn drop(&mut self) {
        self.budget.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a boosted instance's task was made: its quota, and its permit (none yet for a standby).
#[derive(Debug)]
pub(crate) struct Boost {
    pub(crate) millicpu: u32,
    pub(crate) permit: Option<BoostPermit>,
}

/// Waits for `listen` with the boost held, and returns the listener and how long it booted
/// boosted. When it listens first, `apply` (the slot's quota) is spawned holding the permit,
/// which goes back once the update is done: the start does not wait for it (a `runc update`,
/// ≈ 10 ms), so an instance may serve its first requests those milliseconds above its slot
/// (Cloud Run's boost lasts 10 s past the start). When `deadline` passes first, `apply` runs
/// there and then and the permit goes back, and it keeps waiting for `listen` (which fails at
/// the same startup timeout). When `listen` fails, or this future is dropped, the permit goes
/// back without `apply` (the failed start stops the instance).
pub(crate) async fn until_listening<T>(
    permit: BoostPermit,
    deadline: Instant,
    listen: impl Future<Output = Result<T, BackendError>>,
    apply: impl Future<Output = Result<(), BackendError>> + Send + 'static,
) -> Result<(T, Duration), BackendError> {
    let started = Instant::now();
    tokio::pin!(listen);
    let early = tokio::select! {
        biased;
        listened = &mut listen => Some(listened?),
        () = tokio::time::sleep_until(deadline) => None,
    };
    let boosted = started.elapsed();
    match early {
        Some(listener) => {
            tokio::spawn(async move {
                let applying = Instant::now();
                match apply.await {
                    Ok(()) => {
                        tracing::debug!(took = ?applying.elapsed(), "slot applied after the boost")
                    }
                    // The instance keeps its boosted quota until it stops; the permit goes back
                    // all the same, so the budget bounds boots, not this rare failure.
                    Err(e) => {
                        tracing::warn!(error = %e, "applying the slot after the boost failed")
                    }
                }
                drop(permit);
            });
            Ok((listener, boosted))
        }
        None => {
            apply.await?;
            drop(permit);
            Ok((listen.await?, boosted))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serverless_core::{CpuBoost, ErrorKind, ImageRef};

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    type Log = Arc<Mutex<Vec<(Duration, u32)>>>;

    /// An `apply` (taking 2 ms) that records when it ran and how many permits were out then.
    fn recorder(
        budget: &Arc<BoostBudget>,
    ) -> (Log, impl Future<Output = Result<(), BackendError>>) {
        let log = Log::default();
        let t0 = Instant::now();
        let (l, b) = (log.clone(), budget.clone());
        let apply = async move {
            tokio::time::sleep(ms(2)).await;
            l.lock().unwrap().push((t0.elapsed(), b.in_use()));
            Ok(())
        };
        (log, apply)
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_permits_and_each_comes_back_on_drop() {
        let budget = BoostBudget::new(2, 2000);
        let a = budget.try_acquire().unwrap();
        let b = budget.try_acquire().unwrap();
        assert!(
            budget.try_acquire().is_none(),
            "a third boost over a cap of 2"
        );
        assert_eq!(budget.in_use(), 2);
        drop(a);
        let c = budget.try_acquire().expect("a permit back after a drop");
        drop((b, c));
        assert_eq!(budget.in_use(), 0);
        assert!(BoostBudget::new(0, 2000).try_acquire().is_none());
    }

    #[test]
    fn the_boost_follows_app_and_engine() {
        let mut app = AppSpec::new("a", ImageRef::Registry("x/y:1".into()));
        assert_eq!(BoostBudget::new(2, 2000).millicpu_for(&app), Some(2000));
        assert_eq!(BoostBudget::new(0, 2000).millicpu_for(&app), None);
        app.startup_cpu_boost = CpuBoost::Millicpu(500);
        assert_eq!(BoostBudget::new(2, 2000).millicpu_for(&app), Some(500));
        app.startup_cpu_boost = CpuBoost::Off;
        assert_eq!(BoostBudget::new(2, 2000).millicpu_for(&app), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_slot_is_applied_when_it_listens_then_the_permit_goes() {
        let budget = BoostBudget::new(1, 2000);
        let (log, apply) = recorder(&budget);
        let permit = budget.try_acquire().unwrap();
        let listen = async {
            tokio::time::sleep(ms(80)).await;
            Ok(8080)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let (port, boosted) = until_listening(permit, deadline, listen, apply)
            .await
            .unwrap();
        // The start goes on at 80 ms; the update runs behind it with the permit held.
        assert_eq!((port, boosted), (8080, ms(80)));
        assert!(log.lock().unwrap().is_empty());
        assert_eq!(budget.in_use(), 1);
        tokio::time::sleep(ms(5)).await;
        // Applied at 82 ms with the permit still held; given back right after.
        assert_eq!(*log.lock().unwrap(), [(ms(82), 1)]);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_boot_gives_the_permit_back_without_applying() {
        let budget = BoostBudget::new(1, 2000);
        let (log, apply) = recorder(&budget);
        let permit = budget.try_acquire().unwrap();
        let listen = async {
            tokio::time::sleep(ms(30)).await;
            Err::<u16, _>(BackendError::new(ErrorKind::BootFailed, "exited"))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = until_listening(permit, deadline, listen, apply)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BootFailed);
        assert!(log.lock().unwrap().is_empty());
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_deadline_the_slot_is_applied_while_it_still_boots() {
        let budget = BoostBudget::new(1, 2000);
        let (log, apply) = recorder(&budget);
        let permit = budget.try_acquire().unwrap();
        // Listens only at 1.5 s, after the 1 s deadline (in the backend the listen wait fails
        // at that deadline; here it goes on to show the slot is applied meanwhile).
        let listen = async {
            tokio::time::sleep(ms(1500)).await;
            Ok(8080)
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        let task = tokio::spawn(until_listening(permit, deadline, listen, apply));
        tokio::time::sleep(ms(1100)).await;
        assert_eq!(*log.lock().unwrap(), [(ms(1002), 1)]);
        assert_eq!(budget.in_use(), 0, "the permit goes with the boost");
        assert!(!task.is_finished());
        let (port, boosted) = task.await.unwrap().unwrap();
        assert_eq!((port, boosted), (8080, ms(1000)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_start_gives_the_permit_back() {
        let budget = BoostBudget::new(1, 2000);
        let (log, apply) = recorder(&budget);
        let permit = budget.try_acquire().unwrap();
        let listen = std::future::pending::<Result<u16, BackendError>>();
        let deadline = Instant::now() + Duration::from_secs(10);
        let task = tokio::spawn(until_listening(permit, deadline, listen, apply));
        tokio::time::sleep(ms(50)).await;
        assert_eq!(budget.in_use(), 1);
        task.abort();
        let _ = task.await;
        assert_eq!(budget.in_use(), 0);
        assert!(log.lock().unwrap().is_empty());
        assert!(budget.try_acquire().is_some());
    }
}
