-- The API key (by name) that created each message; NULL when authentication was off.
ALTER TABLE messages ADD COLUMN owner TEXT;
