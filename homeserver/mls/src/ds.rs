//! The delivery service's view of a group: its public state and the checks on what members
//! send.
//!
//! A [`Group`] is openmls' `PublicGroup` (ratchet tree, group context, transcript hashes,
//! proposals the server itself made) in a [`Provider`] whose storage is saved whole. The
//! server never holds a group secret: it cannot read application messages, only their group,
//! epoch and kind. Commits travel as public messages so that the server can validate them:
//! [`Group::check_commit`] verifies the signature and membership tag, stages the commit
//! (openmls' full validation of its proposals and path) and reports what it changes (who
//! commits, which devices come in, go out or change their leaf); the caller applies its policy
//! and, if it accepts, [`Group::merge`]s. One commit per epoch: a commit made in another epoch
//! than the group's current one is [`Error::WrongEpoch`], so the first valid commit for an
//! epoch wins and the others must catch up and try again.

use openmls::{
    group::{GroupEpoch, GroupId, PublicGroup, StagedCommit},
    messages::proposals::Proposal,
    prelude::{
        tls_codec::{Deserialize as _, Serialize as _},
        ContentType, ExternalProposal, ExternalSender, KeyPackageIn, LeafNode, LeafNodeIndex, MlsMessageBodyIn,
        MlsMessageIn, ProcessedMessageContent, ProposalStore, ProtocolMessage, ProtocolVersion, RatchetTreeIn, Sender,
        SenderExtensionIndex,
    },
};
use openmls_traits::{signatures::Signer, OpenMlsProvider};

use crate::{store::Provider, Error, Identity, Result, CIPHERSUITE};

/// A device of the group, or one a commit brings in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Its index in the ratchet tree (for a device being added: not known until the merge).
    pub index: Option<u32>,
    pub identity: Identity,
    /// The leaf's signature key, which must be the device's Matrix ed25519 key.
    pub signature_key: Vec<u8>,
}

fn leaf_of(node: &LeafNode, index: Option<u32>) -> Result<Leaf> {
    Ok(Leaf {
        index,
        identity: Identity::of_credential(node.credential())?,
        signature_key: node.signature_key().as_slice().to_vec(),
    })
}

fn mls_message(bytes: &[u8]) -> Result<MlsMessageIn> {
    MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| Error::Malformed(format!("not an MLS message: {e}")))
}

/// A message of the group `group_id` made in `epoch`.
fn protocol_message(bytes: &[u8], group_id: &[u8], epoch: u64) -> Result<ProtocolMessage> {
    let message = mls_message(bytes)?
        .try_into_protocol_message()
        .map_err(|_| Error::Malformed("not a public or private message".into()))?;
    if message.group_id().as_slice() != group_id {
        return Err(Error::Invalid("the message is for another group".into()));
    }
    let got = message.epoch().as_u64();
    if got != epoch {
        return Err(Error::WrongEpoch { current: epoch, got });
    }
    Ok(message)
}

fn application_epoch(bytes: &[u8], group_id: &[u8], epoch: u64) -> Result<u64> {
    let message = protocol_message(bytes, group_id, epoch)?;
    if !matches!(message, ProtocolMessage::PrivateMessage(_)) || message.content_type() != ContentType::Application {
        return Err(Error::Invalid("an application message must be an encrypted MLS application message".into()));
    }
    Ok(epoch)
}

/// A group's epoch, devices and whether a removal the server proposed waits: all that
/// checking an application message needs, without loading the group's whole state (which
/// grows with the group: 1 MiB for 1,000 devices).
#[derive(Clone, Debug)]
pub struct Summary {
    pub group_id: Vec<u8>,
    pub epoch: u64,
    pub members: std::collections::HashSet<Identity>,
    pub removals_pending: bool,
}

impl Summary {
    /// [`Group::check_application`], on the summary.
    pub fn check_application(&self, bytes: &[u8]) -> Result<u64> {
        application_epoch(bytes, &self.group_id, self.epoch)
    }
}

/// A key package a device uploaded, verified: its signature, its lifetime, its ciphersuite.
#[derive(Debug)]
pub struct CheckedKeyPackage {
    pub leaf: Leaf,
    /// The key package's reference (RFC 9420 §5.2), its identifier.
    pub reference: Vec<u8>,
    /// A last-resort key package is handed out again once the others are claimed.
    pub last_resort: bool,
}

/// Verifies a key package (its TLS encoding, as `KeyPackage::tls_serialize_detached` writes
/// it, or wrapped in an `MlsMessage`).
pub fn check_key_package(bytes: &[u8]) -> Result<CheckedKeyPackage> {
    let key_package = match KeyPackageIn::tls_deserialize_exact(bytes) {
        Ok(kp) => kp,
        Err(_) => match mls_message(bytes)?.extract() {
            MlsMessageBodyIn::KeyPackage(kp) => kp,
            _ => return Err(Error::Malformed("not a key package".into())),
        },
    };
    let provider = Provider::default();
    let key_package = key_package
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| Error::Invalid(format!("the key package does not verify: {e}")))?;
    if key_package.ciphersuite() != CIPHERSUITE {
        return Err(Error::Invalid(format!("ciphersuite {:?} is not the portal's", key_package.ciphersuite())));
    }
    let reference = key_package
        .hash_ref(provider.crypto())
        .map_err(|e| Error::Invalid(format!("no reference: {e}")))?
        .as_slice()
        .to_vec();
    Ok(CheckedKeyPackage {
        leaf: leaf_of(key_package.leaf_node(), None)?,
        reference,
        last_resort: key_package.last_resort(),
    })
}

/// What a commit changes, checked by openmls and waiting for the server's policy.
pub struct Commit {
    /// The epoch the commit was made in (the group moves to the next one).
    pub epoch: u64,
    /// The committing device (for an external commit: the device joining).
    pub committer: Leaf,
    /// Whether the committer joins by this commit (an external commit).
    pub external: bool,
    /// Devices the commit adds (from their key packages).
    pub added: Vec<Leaf>,
    /// Devices the commit removes.
    pub removed: Vec<Leaf>,
    /// New leaves of devices already in the group (updates, the committer's path).
    pub updated: Vec<Leaf>,
    staged: StagedCommit,
}

/// A group's public state, as the delivery service keeps it.
pub struct Group {
    provider: Provider,
    public: PublicGroup,
}

impl Group {
    /// Starts tracking a group from its creator's `GroupInfo` (an `MlsMessage`) and ratchet tree
    /// (TLS-encoded): both are verified (the group info's signature, the tree's hashes and
    /// leaves).
    pub fn create(group_info: &[u8], ratchet_tree: &[u8]) -> Result<Group> {
        let info = match mls_message(group_info)?.extract() {
            MlsMessageBodyIn::GroupInfo(info) => info,
            _ => return Err(Error::Malformed("not a group info".into())),
        };
        if info.ciphersuite() != CIPHERSUITE {
            return Err(Error::Invalid("the group's ciphersuite is not the portal's".into()));
        }
        let tree = RatchetTreeIn::tls_deserialize_exact(ratchet_tree)
            .map_err(|e| Error::Malformed(format!("not a ratchet tree: {e}")))?;
        let provider = Provider::default();
        let (public, _) =
            PublicGroup::from_external(provider.crypto(), provider.storage(), tree, info, ProposalStore::new())
                .map_err(|e| Error::Invalid(format!("the group does not verify: {e}")))?;
        Ok(Group { provider, public })
    }

    /// A group saved by [`Group::save`].
    pub fn load(saved: &[u8], group_id: &[u8]) -> Result<Group> {
        let provider = Provider::load(saved)?;
        let public = PublicGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map_err(|e| Error::Malformed(format!("unreadable group state: {e}")))?
            .ok_or_else(|| Error::Malformed("the saved state holds no group".into()))?;
        Ok(Group { provider, public })
    }

    pub fn save(&self) -> Vec<u8> {
        self.provider.save()
    }

    pub fn group_id(&self) -> &[u8] {
        self.public.group_id().as_slice()
    }

    pub fn epoch(&self) -> u64 {
        self.public.group_context().epoch().as_u64()
    }

    /// The group's devices.
    pub fn members(&self) -> Vec<Leaf> {
        self.public
            .members()
            .filter_map(|m| {
                let identity = Identity::of_credential(&m.credential).ok()?;
                Some(Leaf { index: Some(m.index.u32()), identity, signature_key: m.signature_key })
            })
            .collect()
    }

    /// The ratchet tree, TLS-encoded, for devices joining by a Welcome or an external commit.
    pub fn ratchet_tree(&self) -> Vec<u8> {
        self.public.export_ratchet_tree().tls_serialize_detached().unwrap_or_default()
    }

    /// Where `sender` stands among the group's external senders (those that may propose), if
    /// it does.
    pub fn external_sender_index(&self, sender: &ExternalSender) -> Option<usize> {
        self.public.group_context().extensions().external_senders()?.iter().position(|s| s == sender)
    }

    /// Devices the server proposed to remove in this epoch, which the next commit must include.
    pub fn pending_removals(&self) -> Vec<u32> {
        self.public
            .queued_proposals(self.provider.storage())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, p)| match p.proposal() {
                Proposal::Remove(r) => Some(r.removed().u32()),
                _ => None,
            })
            .collect()
    }

    fn protocol_message(&self, bytes: &[u8]) -> Result<ProtocolMessage> {
        protocol_message(bytes, self.public.group_id().as_slice(), self.epoch())
    }

    /// Checks an application message: a private message of this group, in its current epoch.
    /// Its content stays unreadable here; the answer is its epoch.
    pub fn check_application(&self, bytes: &[u8]) -> Result<u64> {
        application_epoch(bytes, self.public.group_id().as_slice(), self.epoch())
    }

    /// What checking application messages needs of the group, kept between its changes.
    pub fn summary(&self) -> Summary {
        Summary {
            group_id: self.group_id().to_vec(),
            epoch: self.epoch(),
            members: self.members().into_iter().map(|m| m.identity).collect(),
            removals_pending: !self.pending_removals().is_empty(),
        }
    }

    /// Validates a commit (a public message) against the group and reports what it changes.
    pub fn check_commit(&self, bytes: &[u8]) -> Result<Commit> {
        let message = self.protocol_message(bytes)?;
        if !matches!(message, ProtocolMessage::PublicMessage(_)) || message.content_type() != ContentType::Commit {
            return Err(Error::Invalid("a commit must be sent as an MLS public message".into()));
        }
        let epoch = message.epoch().as_u64();
        let processed = self
            .public
            .process_message(self.provider.crypto(), message)
            .map_err(|e| Error::Invalid(format!("the commit does not verify: {e}")))?;
        let sender = processed.sender().clone();
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(Error::Invalid("not a commit".into()));
        };
        let staged = *staged;
        let current = |index: LeafNodeIndex| -> Result<Leaf> {
            let node = self.public.leaf(index).ok_or_else(|| Error::Invalid("no member at that leaf".into()))?;
            leaf_of(node, Some(index.u32()))
        };
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let mut updated = Vec::new();
        for queued in staged.queued_proposals() {
            match queued.proposal() {
                Proposal::Add(add) => added.push(leaf_of(add.key_package().leaf_node(), None)?),
                Proposal::Remove(remove) => removed.push(current(remove.removed())?),
                Proposal::Update(update) => {
                    let Sender::Member(index) = queued.sender() else {
                        return Err(Error::Invalid("an update from a non-member".into()));
                    };
                    updated.push(leaf_of(update.leaf_node(), Some(index.u32()))?);
                }
                Proposal::ExternalInit(_) => {}
                other => {
                    return Err(Error::Forbidden(format!(
                        "{:?} proposals are not allowed in the portal's groups",
                        other.proposal_type()
                    )))
                }
            }
        }
        let (committer, external) = match sender {
            Sender::Member(index) => (current(index)?, false),
            Sender::NewMemberCommit => {
                let node = staged
                    .update_path_leaf_node()
                    .ok_or_else(|| Error::Invalid("an external commit without a path".into()))?;
                (leaf_of(node, None)?, true)
            }
            _ => return Err(Error::Invalid("a commit must come from a member or a joining device".into())),
        };
        if let (Some(node), false) = (staged.update_path_leaf_node(), external) {
            updated.push(leaf_of(node, committer.index)?);
        }
        Ok(Commit { epoch, committer, external, added, removed, updated, staged })
    }

    /// Applies a commit the policy accepted: the group moves to the next epoch.
    pub fn merge(&mut self, commit: Commit) -> Result<()> {
        self.public
            .merge_commit(self.provider.storage(), commit.staged)
            .map_err(|e| Error::Invalid(format!("the commit cannot be merged: {e}")))
    }

    /// Proposes, as the group's external sender number `sender_index`, to remove the device at
    /// `leaf`; the proposal is kept in the group (the next commit must include it) and
    /// returned, as an `MlsMessage`, for the members.
    pub fn propose_removal(&mut self, leaf: u32, signer: &impl Signer, sender_index: usize) -> Result<Vec<u8>> {
        let message = ExternalProposal::new_remove::<Provider>(
            LeafNodeIndex::new(leaf),
            self.public.group_id().clone(),
            GroupEpoch::from(self.epoch()),
            signer,
            SenderExtensionIndex::new(sender_index as u32),
        )
        .map_err(|e| Error::Invalid(format!("cannot propose: {e}")))?;
        let bytes = message.tls_serialize_detached().map_err(|e| Error::Invalid(e.to_string()))?;
        let protocol = self.protocol_message(&bytes)?;
        let processed = self
            .public
            .process_message(self.provider.crypto(), protocol)
            .map_err(|e| Error::Invalid(format!("the group refuses the proposal: {e}")))?;
        let ProcessedMessageContent::ProposalMessage(queued) = processed.into_content() else {
            return Err(Error::Invalid("not a proposal".into()));
        };
        self.public
            .add_proposal(self.provider.storage(), *queued)
            .map_err(|e| Error::Invalid(format!("cannot keep the proposal: {e}")))?;
        Ok(bytes)
    }

    /// Checks a GroupInfo (an `MlsMessage`) a committer gives for the group's current epoch,
    /// for devices joining by an external commit: signed by a member of the current tree,
    /// naming the current group context (epoch, tree hash, transcript hash), with the external
    /// public key such a join needs.
    pub fn check_group_info(&self, bytes: &[u8]) -> Result<()> {
        let info = match mls_message(bytes)?.extract() {
            MlsMessageBodyIn::GroupInfo(info) => info,
            _ => return Err(Error::Malformed("not a group info".into())),
        };
        if info.extensions().external_pub().is_none() {
            return Err(Error::Invalid("the group info has no external public key".into()));
        }
        let tree = RatchetTreeIn::tls_deserialize_exact(self.ratchet_tree().as_slice())
            .map_err(|e| Error::Malformed(format!("the group's own tree: {e}")))?;
        let provider = Provider::default();
        let (public, _) =
            PublicGroup::from_external(provider.crypto(), provider.storage(), tree, info, ProposalStore::new())
                .map_err(|e| Error::Invalid(format!("the group info does not verify: {e}")))?;
        if public.group_context() != self.public.group_context() {
            return Err(Error::Invalid("the group info is not of the group's current epoch".into()));
        }
        Ok(())
    }

    /// Whether a commit includes every removal the server proposed in its epoch.
    pub fn includes_pending_removals(&self, commit: &Commit) -> bool {
        self.pending_removals().into_iter().all(|leaf| commit.removed.iter().any(|r| r.index == Some(leaf)))
    }
}
