//! The command-line options that say who may change the policy (`serve` and `doctor` share
//! them): trusted owners, the development-only switch that turns the ownership rule off, and the
//! key signed policies must carry.

use crate::reload::{Gate, Refused};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct PolicyGateArgs {
    /// Also trust files owned by this uid (besides root and the gateway's own user) to hold the
    /// policy, its directories and the secret files it names. Repeatable.
    #[arg(
        long = "trusted-policy-owner",
        value_name = "UID",
        env = "PORTCULLIS_TRUSTED_POLICY_OWNER",
        value_delimiter = ','
    )]
    pub trusted_policy_owners: Vec<u32>,
    /// DEVELOPMENT ONLY: do not check who can write the policy and the secret files it names.
    /// Logged as a warning at start and at every reload, and noted in the audit log.
    #[arg(long)]
    pub insecure_policy_permissions: bool,
    /// Load only policies signed by this Ed25519 key (`portcullis policy keygen`): 64 hex digits
    /// or a `.pub` file. The signature is FILE.sig beside the policy, and a policy whose
    /// `[gateway] serial` is lower than the one in force is refused.
    #[arg(long, value_name = "KEY", env = "PORTCULLIS_POLICY_PUBKEY")]
    pub policy_pubkey: Option<String>,
}

impl PolicyGateArgs {
    pub fn gate(&self) -> Result<Gate, Refused> {
        Gate::new(
            &self.trusted_policy_owners,
            self.insecure_policy_permissions,
            self.policy_pubkey.as_deref(),
        )
    }
}
