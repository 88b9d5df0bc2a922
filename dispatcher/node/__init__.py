"""The node's Tarantool: its process, the connection, the stored functions
(the contract between Python and lua/), the queue client and the records."""
