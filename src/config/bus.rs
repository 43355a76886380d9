//! Rules that span the bus section and a queue's own: checked by `Settings::validate`.

use super::{ConfigError, QueueSettings};
use crate::bus::{BusSettings, PublishMode};

/// The bus is a hint, never the only path: a queue that may idle at zero tasks with a shared
/// bus needs something that still finds its work while the bus is down.
pub(crate) fn check_queue_cover(
    name: &str,
    queue: &QueueSettings,
    bus: &BusSettings,
    http_trigger: bool,
) -> Result<(), ConfigError> {
    let s = &queue.scaling;
    let covered = queue.bus.outage_probe_interval.is_some()
        || s.idle_probe_interval.is_some()
        || http_trigger
        || s.wake_on_publish;
    if bus.is_shared() && s.wake_on_publish && queue.bus.publish != PublishMode::Every {
        return Err(ConfigError::invalid(
            format!("queues.{name}.bus.publish"),
            format!("{:?}", queue.bus.publish).to_lowercase(),
            format!(
                "queues.{name}.scaling.wake_on_publish = true promises a trigger for every \
                 message: it needs publish = \"every\""
            ),
        ));
    }
    if bus.is_shared() && s.min_tasks == 0 && !covered {
        return Err(ConfigError::invalid(
            format!("queues.{name}.bus.outage_probe_interval"),
            "off",
            format!(
                "with scaling.min_tasks = 0 and a bus, nothing would find queue {name}'s work \
                 while the bus is down: set queues.{name}.bus.outage_probe_interval (e.g. \
                 \"30s\") or queues.{name}.scaling.idle_probe_interval"
            ),
        ));
    }
    Ok(())
}
