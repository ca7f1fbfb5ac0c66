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

    /// Instances booting boosted now.
    #[cfg(test)]
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

/// What [`until_listening`] reports besides the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Boosted {
    /// From the call (the task's start) until the slot was being applied.
    pub(crate) boosted: Duration,
    /// How long applying the slot took.
    pub(crate) slot_applied: Duration,
}

/// Waits for `listen` with the boost held. When it succeeds, or when `deadline` passes first,
/// `apply` sets the slot's quota and the permit goes back; after a deadline it keeps waiting for
/// `listen` (which fails at the same startup timeout). When `listen` fails the permit goes back
/// without `apply` (the failed start stops the instance); when this future is dropped, too.
pub(crate) async fn until_listening<T>(
    permit: BoostPermit,
    deadline: Instant,
    listen: impl Future<Output = Result<T, BackendError>>,
    apply: impl Future<Output = Result<(), BackendError>>,
) -> Result<(T, Boosted), BackendError> {
    let started = Instant::now();
    tokio::pin!(listen);
    let early = tokio::select! {
        biased;
        listened = &mut listen => Some(listened?),
        () = tokio::time::sleep_until(deadline) => None,
    };
    let boosted = started.elapsed();
    let applying = Instant::now();
    apply.await?;
    let report = Boosted {
        boosted,
        slot_applied: applying.elapsed(),
    };
    drop(permit);
    let listener = match early {
        Some(listener) => listener,
        None => listen.await?,
    };
    Ok((listener, report))
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
        assert_eq!(port, 8080);
        assert_eq!(
            boosted,
            Boosted {
                boosted: ms(80),
                slot_applied: ms(2)
            }
        );
        // Applied at 80 ms with the permit still held; given back right after.
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
        assert_eq!(port, 8080);
        assert_eq!(boosted.boosted, ms(1000));
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
