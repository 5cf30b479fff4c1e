"""The Slack edge: listeners that ack, extract plain values, call bot/, and render replies."""
