//! The conformance suite: scenarios every [`Source`](outbox_core::Source) and
//! every [`Destination`](outbox_core::Destination) must pass against its real
//! server. Each scenario checks a promise of the workspace's `CONTRACT.md`,
//! which names it.
//!
//! An adapter's test file implements [`SourceHarness`] or
//! [`DestinationHarness`] and expands [`source_conformance!`] or
//! [`destination_conformance!`], which generate one `#[tokio::test]` per
//! scenario. Each scenario asks the harness factory for a fresh harness by
//! scenario name, so each can use its own table, topic, queue or subject.
//! A SQL database's test file also implements [`TableHarness`] and expands
//! [`table_conformance!`]: the writer's atomicity, relays sharing a table and
//! the operator's calls, the same on every database; and [`InboxHarness`]
//! with [`inbox_conformance!`] for the consumer's inbox.

mod boxed;
mod destination_suite;
mod harness;
mod inbox_suite;
mod servers;
mod source_suite;
mod table_suite;
mod verify;
mod writer_suite;

pub use boxed::Boxed;
pub use destination_suite::*;
pub use harness::{DestinationHarness, OpenWrites, Received, SourceHarness};
pub use inbox_suite::*;
pub use servers::{nats_server_bin, tansu_bin};
pub use source_suite::*;
pub use table_suite::*;
pub use verify::{
    arrivals, assert_order_per_key, assert_recovered, eventually, fast_relay_config,
    numbered_messages, relay_good_beside_bad, run_relay, RunningRelay,
};
pub use writer_suite::second_writer_of_a_key_waits;

/// Generates one test per source scenario. `$make` is an async fn taking the
/// scenario name (`&'static str`) and returning a [`SourceHarness`].
///
/// `source_conformance!(@one_reader $make)` generates the scenarios of a
/// source with one reader at a time (a log-based source, whose other relays
/// stand by): all but the three that need two relays claiming the same
/// outbox at once (`stale_relay_is_fenced`,
/// `lost_claims_never_touch_newer_ones`, `a_claim_keeps_no_row_it_holds_back`).
#[macro_export]
macro_rules! source_conformance {
    ($make:path) => {
        $crate::source_conformance!(@one_reader $make);
        $crate::source_conformance!(@tests $make;
            stale_relay_is_fenced,
            lost_claims_never_touch_newer_ones,
            a_claim_keeps_no_row_it_holds_back,
        );
    };
    (@one_reader $make:path) => {
        $crate::source_conformance!(@tests $make;
            order_per_key_and_nothing_lost,
            every_field_survives,
            retry_then_success,
            poison_is_dead_lettered,
            no_head_of_line_blocking,
            a_long_failing_key_holds_back_only_itself,
            many_failing_keys_hold_back_only_themselves,
            many_parked_keys_hold_back_only_themselves,
            a_long_parked_key_holds_back_only_itself,
            a_batch_past_its_send_window_keeps_its_acks,
            a_key_in_a_slow_send_holds_back_only_itself,
            look_alike_keys_stay_distinct,
            dead_relay_claims_taken_over,
            shutdown_releases_claims,
            a_long_error_is_stored_cut_short,
            a_malformed_head_parks_its_key,
            a_claim_stays_within_its_byte_budget,
        );
    };
    (@tests $make:path; $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let harness = $make(stringify!($scenario)).await;
                $crate::$scenario(&harness).await;
            }
        )*
    };
}

/// Generates one test per SQL table scenario ([`TableHarness`]). `$make` is
/// an async fn taking the scenario name (`&'static str`) and the
/// [`TableSetup`] the scenario needs, and returning a fresh table's harness.
#[macro_export]
macro_rules! table_conformance {
    ($make:path) => {
        $crate::table_conformance!(@tests $make;
            a_rolled_back_message_never_exists_and_a_committed_one_is_delivered:
                $crate::TableSetup::default(),
            a_typed_event_is_written_with_its_metadata:
                $crate::TableSetup::default(),
            four_relays_keep_each_key_in_order_and_lose_nothing:
                $crate::TableSetup::default(),
            operators_requeue_dead_letters_and_clean_up_delivered_rows:
                $crate::TableSetup::MARK_DONE,
            operators_list_the_messages_waiting_oldest_first:
                $crate::TableSetup::default(),
            a_requeued_dead_letter_is_delivered_and_a_parked_key_resumes_in_order:
                $crate::TableSetup::PARKING,
        );
    };
    (@tests $make:path; $($scenario:ident: $setup:expr),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let harness = $make(stringify!($scenario), $setup).await;
                $crate::$scenario(&harness).await;
            }
        )*
    };
}

/// Generates one test per inbox scenario ([`InboxHarness`]). `$make` is an
/// async fn taking the scenario name and returning a fresh inbox's harness.
#[macro_export]
macro_rules! inbox_conformance {
    ($make:path) => {
        $crate::source_conformance!(@tests $make;
            each_message_is_applied_once_per_consumer,
            two_consumers_racing_on_one_id_apply_it_once,
            ids_older_than_the_window_are_pruned_in_batches,
            key_positions_idle_past_the_window_are_pruned,
            a_consumer_name_out_of_bounds_is_refused,
            a_message_older_than_its_keys_last_is_stale_in_order,
        );
    };
}

/// Generates one test per destination scenario. `$make` is an async fn taking
/// the scenario name and returning a [`DestinationHarness`].
#[macro_export]
macro_rules! destination_conformance {
    ($make:path) => {
        $crate::destination_conformance!(@tests $make;
            delivers_in_order_with_metadata,
            publishes_cloud_events_in_binary_mode,
            publishes_cloud_events_in_structured_mode,
            refused_message_is_dead_lettered,
            unfit_messages_are_dead_lettered,
        );
    };
    (@tests $make:path; $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let harness = $make(stringify!($scenario)).await;
                $crate::$scenario(&harness).await;
            }
        )*
    };
}
