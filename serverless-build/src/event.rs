//! What a build reports while it runs: steps as they start and finish (with their time and
//! whether the cache answered), and the output of the running step.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// One Dockerfile instruction of a build, as the builder numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// `(stage, stages)` of a multi-stage build, 1-based; `None` with one stage.
    pub stage: Option<(u32, u32)>,
    /// The instruction's number in its stage, 1-based.
    pub number: u32,
    /// Instructions in the stage.
    pub total: u32,
    /// The instruction as the builder printed it (`RUN make`, `COPY --from=build /out /app`).
    pub instruction: String,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((stage, stages)) = self.stage {
            write!(f, "[{stage}/{stages}] ")?;
        }
        write!(
            f,
            "STEP {}/{}: {}",
            self.number, self.total, self.instruction
        )
    }
}

/// A finished step: how long it took and whether the layer came from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepTime {
    /// The step.
    pub step: Step,
    /// From its start to the next step's start (or the build's end).
    pub elapsed: Duration,
    /// The builder reused a cached layer instead of running it.
    pub cached: bool,
}

/// A build's progress, in the order it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildEvent {
    /// A step started.
    StepStarted(Step),
    /// A step finished.
    StepFinished(StepTime),
    /// A line of output (a `RUN` step's, or the builder's own), at most
    /// [`MAX_LINE`] bytes.
    Output(String),
}

/// Longest output line kept (longer ones are cut, with `…`).
pub const MAX_LINE: usize = 512;

/// Turns a builder's output lines into [`BuildEvent`]s: buildah's `[s/S] STEP n/m: INSTR`
/// lines start steps, `--> Using cache` marks the running one cached, everything else is output.
#[derive(Debug, Default)]
pub(crate) struct StepTracker {
    current: Option<(Step, Instant, bool)>,
    pub(crate) finished: Vec<StepTime>,
}

impl StepTracker {
    /// Feeds one line; returns the events it makes.
    pub(crate) fn line(&mut self, line: &str) -> Vec<BuildEvent> {
        let line = cut(line);
        let mut events = Vec::new();
        if let Some(step) = parse_step(&line) {
            events.extend(self.finish());
            events.push(BuildEvent::StepStarted(step.clone()));
            self.current = Some((step, Instant::now(), false));
            return events;
        }
        if line.starts_with("--> Using cache ") {
            if let Some((_, _, cached)) = &mut self.current {
                *cached = true;
            }
        }
        events.push(BuildEvent::Output(line));
        events
    }

    /// Ends the running step (at the build's end, or when the next one starts).
    pub(crate) fn finish(&mut self) -> Option<BuildEvent> {
        let (step, started, cached) = self.current.take()?;
        let time = StepTime {
            step,
            elapsed: started.elapsed(),
            cached,
        };
        self.finished.push(time.clone());
        Some(BuildEvent::StepFinished(time))
    }

    /// The running step, if any.
    pub(crate) fn current(&self) -> Option<&Step> {
        self.current.as_ref().map(|(s, _, _)| s)
    }
}

/// `line` cut to [`MAX_LINE`] bytes (on a character boundary).
fn cut(line: &str) -> String {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.len() <= MAX_LINE {
        return line.to_owned();
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

/// `[2/3] STEP 4/7: COPY . .` or `STEP 1/2: FROM x`.
fn parse_step(line: &str) -> Option<Step> {
    let (stage, rest) = match line.strip_prefix('[') {
        Some(rest) => {
            let (frac, rest) = rest.split_once("] ")?;
            (Some(fraction(frac)?), rest)
        }
        None => (None, line),
    };
    let rest = rest.strip_prefix("STEP ")?;
    let (frac, instruction) = rest.split_once(": ")?;
    let (number, total) = fraction(frac)?;
    Some(Step {
        stage,
        number,
        total,
        instruction: instruction.to_owned(),
    })
}

fn fraction(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('/')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{parse_step, BuildEvent, Step, StepTracker, MAX_LINE};

    #[test]
    fn step_lines_with_and_without_stages() {
        assert_eq!(
            parse_step("[1/2] STEP 5/6: RUN echo \"a: b\""),
            Some(Step {
                stage: Some((1, 2)),
                number: 5,
                total: 6,
                instruction: "RUN echo \"a: b\"".into()
            })
        );
        let s = parse_step("STEP 1/2: FROM oci-archive:/x.tar AS build").unwrap();
        assert_eq!(s.stage, None);
        assert_eq!(s.to_string(), "STEP 1/2: FROM oci-archive:/x.tar AS build");
        for not in [
            "",
            "STEP",
            "[1/2] COMMIT x",
            "STEP x/2: RUN",
            "[a] STEP 1/2: RUN",
            "--> Using cache 12",
        ] {
            assert_eq!(parse_step(not), None, "{not}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn steps_are_timed_and_cache_hits_marked() {
        let mut t = StepTracker::default();
        let ev = t.line("[1/2] STEP 1/2: FROM base AS build");
        assert!(matches!(&ev[..], [BuildEvent::StepStarted(s)] if s.number == 1));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ev = t.line("[1/2] STEP 2/2: RUN make");
        let [BuildEvent::StepFinished(first), BuildEvent::StepStarted(_)] = &ev[..] else {
            panic!("{ev:?}");
        };
        assert_eq!(first.elapsed, Duration::from_millis(300));
        assert!(!first.cached);
        assert_eq!(t.current().unwrap().instruction, "RUN make");
        t.line("--> Using cache 9cc95438b97");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Some(BuildEvent::StepFinished(second)) = t.finish() else {
            panic!("no step finished");
        };
        assert!(second.cached);
        assert_eq!(second.elapsed, Duration::from_millis(20));
        assert_eq!(t.finished.len(), 2);
        assert!(t.finish().is_none());
    }

    #[test]
    fn long_lines_are_cut() {
        let mut t = StepTracker::default();
        let long = "é".repeat(MAX_LINE);
        let [BuildEvent::Output(line)] = &t.line(&long)[..] else {
            panic!()
        };
        assert!(line.len() <= MAX_LINE + '…'.len_utf8(), "{}", line.len());
        assert!(line.ends_with('…'));
    }
}
