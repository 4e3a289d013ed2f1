"""The ZeroMQ wire between controller and presenter: message format (protocol) and the controller-side client."""
