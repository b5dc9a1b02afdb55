"""Chat: prompts and constraints for local engines, which engine answers a request
(``dispatch``), and the web UI's stored conversations (``conversations``)."""
