//! Reading the whole registry in bounded steps, from a node's store or
//! from Redis directly (the command line): what a whole listing needs.

use std::future::Future;

use super::redis::Registry;
use super::{ConnectionRecord, Result, Store};

/// Where a listing reads the registry from: a node's store, or Redis
/// directly (the CLI).
pub(crate) trait ListingSource: Send + Sync + 'static {
    /// Up to `limit` usernames after `after`, in name order.
    fn names(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// The connections of each of `users` that has any, in that order.
    fn details(
        &self,
        users: &[String],
    ) -> impl Future<Output = Result<Vec<(String, Vec<ConnectionRecord>)>>> + Send;
    /// How many names one step reads.
    fn step(&self) -> usize;
}

/// Both sources answer with the same methods of their own.
macro_rules! listing_source {
    ($source:ty, $step:expr) => {
        impl ListingSource for $source {
            fn names(
                &self,
                after: Option<&str>,
                limit: usize,
            ) -> impl Future<Output = Result<Vec<String>>> + Send {
                self.user_names(after, limit)
            }
            fn details(
                &self,
                users: &[String],
            ) -> impl Future<Output = Result<Vec<(String, Vec<ConnectionRecord>)>>> + Send {
                self.users_connections(users)
            }
            fn step(&self) -> usize {
                $step(self)
            }
        }
    };
}

listing_source!(Store, Store::listing_step);
listing_source!(Registry, |_: &Registry| super::redis::LISTING_STEP);
