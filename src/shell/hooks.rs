//! The core's backend calls ([`Output::Outbound`]: access hooks, webhook
//! posts) through the loop's outbound HTTP client, and their answers back
//! to the core.

use super::outbound::{OutboundError, OutboundRequest};
use super::*;
use crate::core::{OutboundCall, OutboundResult};

impl Server {
    /// Starts a call the core asked for; a call that cannot start is
    /// answered as failed at once.
    pub(super) fn start_outbound(&mut self, call: OutboundCall, now: Now) {
        let url = match crate::url::parse_url(&call.url) {
            Ok(url) => url,
            Err(e) => {
                // Validated when it was set: only a URL stored by an older build gets here.
                return self.hub.handle_outbound(call.request, OutboundResult::Failed(e.to_string()), now);
            }
        };
        let mut request = OutboundRequest::post(call.request, url, call.body, now.mono + call.timeout);
        request.headers.push(("X-RealtimeHub-Signature".to_string(), call.signature));
        if let Err(e) = self.outbound.start(request, now.mono) {
            let why = match e {
                OutboundError::Overloaded => "too many backend calls waiting".to_string(),
                e => e.to_string(),
            };
            self.hub.handle_outbound(call.request, OutboundResult::Failed(why), now);
        }
    }

    /// Hands every finished call's answer to the core.
    pub(super) fn outbound_completions(&mut self, now: Now) {
        for (request, result) in self.outbound.take_completions() {
            let result = match result {
                Ok(response) => OutboundResult::Answered(response.status, response.body),
                Err(e) => OutboundResult::Failed(e.to_string()),
            };
            self.hub.handle_outbound(request, result, now);
        }
        self.hub.record_outbound(self.outbound.connections(), self.outbound.in_flight());
    }
}
