ALTER TABLE notes ADD COLUMN words integer;

-- @down
ALTER TABLE notes DROP COLUMN words;
