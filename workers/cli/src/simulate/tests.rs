//! The simulator's unit tests: a burst profile and extreme profiles run in virtual time, a phase
//! after the end does not stretch the run, and bad profiles are named.

use super::profile::toml_from_str;
use super::*;

fn burst_profile() -> Profile {
    toml_from_str(
        "duration = \"300s\"\nhandler_ms = 20\n[[phases]]\nat = \"0s\"\nrate = 0\n\
         [[phases]]\nat = \"30s\"\nburst = 2000\n[[phases]]\nat = \"60s\"\nrate = 5\n\
         [[phases]]\nat = \"120s\"\nrate = 0\n",
    )
    .unwrap()
}

#[test]
fn a_burst_profile_in_virtual_time() {
    let mut q = QueueSettings::default();
    q.scaling.max_tasks = ebbflow::config::MaxTasks::of::<8>();
    q.scaling.messages_per_task = ebbflow::config::MessagesPerTask::of::<100>();
    let (samples, summary) = simulate(&burst_profile(), q).unwrap();
    assert_eq!(samples.len(), 300);
    assert_eq!(summary.sent, 2000 + 300);
    assert_eq!(summary.handled, summary.sent, "{summary:?}");
    assert_eq!(summary.peak_tasks, 8);
    // Consuming costs about two calls a message (receive + delete) at small batches, and
    // approaches one plus a little at full batches.
    assert!(
        (1.0..2.2).contains(&summary.calls_per_message),
        "{summary:?}"
    );
    // No push trigger: the idle task may be in a 30 s back-off sleep when the burst lands,
    // so the scale-up shows within 30 s and pickup can take as long.
    let after_burst = samples.iter().filter(|s| s.t > 30 && s.t <= 70);
    assert!(after_burst.map(|s| s.tasks).max().unwrap() >= 4);
    assert!(summary.pickup_p99_ms <= 35_000.0, "{summary:?}");
    let late = samples.last().unwrap();
    assert_eq!((late.tasks, late.depth), (1, 0), "{late:?}");
    let text = csv(&samples);
    assert!(text.starts_with(
        "t_s,depth,tasks,receive_calls,handled,pickup_p50_ms,replicas,throttled_calls\n1,0,1,"
    ));
    assert_eq!(text.lines().count(), 301);
    assert!(samples
        .iter()
        .all(|s| s.replicas == 1 && s.throttled_calls == 0));
    assert_eq!(summary.replica_minutes, 5.0);
    let chart = svg(&samples, "burst");
    assert_eq!(chart.matches("<polyline").count(), 6);
}

#[test]
fn extreme_profiles_end_without_a_panic() {
    let empty: Profile = toml_from_str("duration = \"0s\"\nphases = []\n").unwrap();
    let (samples, summary) = simulate(&empty, QueueSettings::default()).unwrap();
    assert!(samples.is_empty());
    assert_eq!((summary.sent, summary.handled, summary.left), (0, 0, 0));
    // Handlers that never end: the drain deadline aborts them and releases the messages.
    let endless: Profile = toml_from_str(&format!(
        "duration = \"5s\"\nhandler_ms = {}\n[[phases]]\nat = \"0s\"\nburst = 10\n\
         [replicas]\nmin = 1\nmax = 1000\nqueue_length = 1\n",
        i64::MAX
    ))
    .unwrap();
    let (_, summary) = simulate(&endless, QueueSettings::default()).unwrap();
    assert_eq!((summary.sent, summary.handled, summary.left), (10, 0, 10));
}

/// A phase that starts after the profile's end (a profile shortened to try its first part)
/// sends nothing, and the run ends with the profile: the producer used to sleep until the
/// phase began, and the run waited for it, ticking the replicas through the gap (a phase
/// 100 days in took over ten minutes of wall time for a one-minute profile).
#[tokio::test(start_paused = true)]
async fn a_phase_after_the_end_does_not_stretch_the_run() {
    let late: Profile = toml_from_str(
        "duration = \"1m\"\n[[phases]]\nat = \"0s\"\nrate = 1\n\
         [[phases]]\nat = \"1d\"\nrate = 5\nburst = 10\n",
    )
    .unwrap();
    let began = tokio::time::Instant::now();
    let (samples, summary) = run(&late, QueueSettings::default()).await.unwrap();
    let took = began.elapsed();
    assert_eq!(samples.len(), 60);
    assert_eq!(summary.sent, 60, "{summary:?}");
    // The profile's minute plus the drain, not the day until the late phase.
    assert!(took < Duration::from_secs(10 * 60), "virtual time {took:?}");
}

#[test]
fn bad_profiles_are_named() {
    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = std::env::temp_dir().join(format!("ebbflow-profile-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = RemoveOnDrop(dir.clone());
    let path = dir.join("p.toml");
    std::fs::write(
        &path,
        "duration = \"1m\"\n[[phases]]\nat = \"0s\"\nrate = -1\n",
    )
    .unwrap();
    let err = Profile::load(&path).unwrap_err();
    assert!(err.contains("phases[0].rate = -1"), "{err}");
    std::fs::write(&path, "duration = \"1m\"\nphases = []\nextra = 1\n").unwrap();
    assert!(Profile::load(&path).unwrap_err().contains("extra"));
}
