-- Send windows (SPEC §9.2): when a campaign may send, as a list of weekly windows
-- [{"timezone": "Europe/Paris", "days": ["mon", ...], "from": "08:00", "to": "20:00"}]
-- (their union; validated by the API). NULL: always open.
ALTER TABLE campaigns ADD COLUMN send_windows jsonb;
