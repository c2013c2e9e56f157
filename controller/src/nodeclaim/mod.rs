//! NodeClaims: the lifecycle controller (launch, register, initialize, finalize) and garbage collection
//! with Karpenter's liveness rules.

pub(crate) mod gc;
pub(crate) mod lifecycle;

pub(crate) use gc::GarbageCollector;
pub(crate) use lifecycle::Lifecycle;
