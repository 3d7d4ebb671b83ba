-- How many times the supervisor restarted each role of the node after it died, by role
-- ({"worker": 3}); `forge-node status` shows it, so a crash loop is visible from anywhere.
ALTER TABLE forge_nodes ADD COLUMN restarts jsonb NOT NULL DEFAULT '{}';
