-- One user profile with its order totals, read through the view.
SELECT to_jsonb(t) FROM user_profile t WHERE user_id = $1
